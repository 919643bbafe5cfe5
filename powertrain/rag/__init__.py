"""Collections: ingest documents, index them, and retrieve what grounds an answer."""
