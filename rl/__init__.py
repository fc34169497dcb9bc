"""Floor 2: rewards, policy tuning, best-of-N. Imports from ranker, retriever and core."""
