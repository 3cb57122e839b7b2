"""Click command groups. Each group lives in its own module and is imported only when used."""
