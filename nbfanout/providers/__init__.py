"""Provider adapters, one per wire format."""
