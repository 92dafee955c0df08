"""Studies built on analyze: sweeps, LLM phases, tensor-parallel scaling."""
