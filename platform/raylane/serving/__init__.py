"""Ray Serve stage: the inference application and its deployment."""
