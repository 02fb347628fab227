"""Channel importance: which channels of a coupled group matter most."""
