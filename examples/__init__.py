"""Model builders a team writes for raylane: kept outside the library, named in a config as
`model.builder: examples.<module>:build`."""
