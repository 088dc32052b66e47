"""Generated test models (tiny random-weight GGUFs) and the fixtures that serve them."""
