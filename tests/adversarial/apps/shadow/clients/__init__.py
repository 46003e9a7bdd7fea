"""Shadows fedmodel's installed `clients` package when the FAB folder comes first on sys.path."""
