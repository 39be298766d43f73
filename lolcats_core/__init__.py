"""lolcats_core: LoLCATs linearization of Hugging Face causal LMs (no orchestration imports)."""
