"""The async core: no UI imports here (a test checks sys.modules)."""
