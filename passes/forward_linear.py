"""Forward symbolic linear bounds (placeholder, filled in below)."""
