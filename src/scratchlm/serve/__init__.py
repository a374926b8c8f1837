"""An OpenAI-compatible HTTP server over the continuous-batching engine, with a chat page.

    from scratchlm.serve.app import ServeConfig, build_app
    app = build_app(model, tokenizer, EngineConfig(max_slots=8), ServeConfig())   # a FastAPI app

`chat_format` (the chat template) imports nothing from the web stack, so `scratchlm chat` needs no FastAPI.
"""
