"""`python -m fake_llm`: serve the fake LLM on a port until interrupted."""

from fake_llm.server import main

raise SystemExit(main())
