"""A fake OpenAI-compatible streaming LLM server for the tests and the benchmarks.

Scripted text, a set token rate and injectable faults, over real HTTP. Run it alone with
`python -m fake_llm --port 8005`.
"""

from fake_llm.server import FakeLLMServer, Script, split_text, tokenize_text

__all__ = ["FakeLLMServer", "Script", "split_text", "tokenize_text"]
