"""Pictures of a guided run's record (NFE per step, cosine similarity, guidance norm)."""
