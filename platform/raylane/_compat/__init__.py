"""The one wall around other packages' private APIs: one module per dependency.

Everything raylane uses that a dependency does not publish (a leading underscore, an
`_internal` or `_private` package, a monkeypatch) is imported or applied here and nowhere
else, so a release that moves a symbol breaks one file, and `tests/unit/test_compat_*.py` say
which symbol moved and in which release it was last seen.
"""
