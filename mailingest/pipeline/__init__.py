"""The per-message pipeline: unpack → detect → extract → normalize → validate → store → emit."""
