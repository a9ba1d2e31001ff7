"""Mail sources: each one only turns the outside world into raw messages handed to a sink."""
