"""Text tools every stage shares: CJK characters, language and word counts (`cjk`); ROUGE-L tokens,
scores and the novelty index behind Alpaca's filter and near-duplicate removal (`rouge`)."""
