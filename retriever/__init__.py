"""Floor 4: encoders, FAISS indexes, bank retrieval. Imports only from core."""
