"""serve: the trained model behind an OpenAI-compatible HTTP API, a /chat page and a terminal chat.

Decoding itself is model/decode.py's Decoder (eval times generation with it too).

    engine.py    Engine: a loaded bundle generating text (one stream here, or many through the batcher)
    batcher.py   Batcher: one thread running every active generation as one batched decode step per token
    sampling.py  Sampling: one answer's sampling parameters (the engine's and the batcher's)
    text.py      TextStream: token ids → UTF-8-safe text deltas, stop strings, stripped chat answers
    prompts.py   request → prompt ids within the context (old chat exchanges dropped to fit)
    schema.py    the request bodies (strict pydantic, every string valid Unicode) and their 400s
    limits.py    BodyLimit: request bodies over --max-request-bytes refused (413) before they are parsed
    errors.py    APIError: OpenAI-style error bodies
    auth.py      API keys (file, $CHATPIPE_API_KEYS), checked in constant time
    app.py       the FastAPI app: /v1/chat/completions, /v1/completions, /v1/models, /health, /chat
    server.py    bind + uvicorn, in the foreground (`chatpipe serve`) or a background thread (tests, bench)
    source.py    --model: a bundle directory or gs:// URI, and --device
    terminal.py  `chatpipe chat`
    static/      the /chat page (HTML, CSS, vanilla JS; no external fetches)
"""
