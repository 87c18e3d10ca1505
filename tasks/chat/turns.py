"""How a model's answer must end, how answers are sampled by default, and the prompts we judge them on.

The health gate, eval, the training loop's samples, the bundle's generation config and the server all
ask the same questions, so the answers live here once: an answer ends cleanly when generation stopped on
a stop marker before its token limit, is not empty and holds no turn marker (`turn_problem`).
"""
from __future__ import annotations

from chatpipe.tasks.chat.format import STOP_MARKERS, TURN_MARKERS, Turn

DEFAULT_GENERATION = {"temperature": 0.8, "top_p": 0.95, "top_k": 50, "max_new_tokens": 128,
                      "stop": list(STOP_MARKERS)}  # a bundle's generation_config.json unless publish says otherwise

# The training loop's samples (judged by the gate) — and the first three of eval's chat prompts; each is rendered
# in the run's chat format (tasks/chat/formats.py).
SAMPLE_PROMPTS = tuple((Turn("user", text),) for text in (
    "Hi! How are you doing today?", "What do you like to do on the weekend?", "Can you recommend a good book?"))
CHAT_PROMPTS = (*SAMPLE_PROMPTS, *(
    (Turn("user", "What is your favorite food?"),),
    (Turn("user", "Where did you grow up?"),),
    (Turn("user", "I just adopted a puppy!"),),
    (Turn("user", "Tell me a joke."),),
    (Turn("user", "How do I reverse a list in Python?"),),
    (Turn("user", "Write a Python function that adds two numbers."),),
    (Turn("system", "You are a helpful assistant."), Turn("user", "What is the capital of France?")),
    (Turn("user", "Hello!"), Turn("assistant", "Hi! How can I help you today?"),
     Turn("user", "Do you like music?")),
    (Turn("user", "I'm feeling tired today."), Turn("assistant", "Sorry to hear that. Did you sleep well?"),
     Turn("user", "Not really, I stayed up late.")),
))


def turn_problem(sample, markers: tuple[str, ...] = TURN_MARKERS) -> str | None:
    """Why a generated answer does not follow the turn structure, or None if it does (gate and eval).

    `sample` is {"completion": text, "stopped": True if generation ended on a stop marker before the
    token limit}; a clean answer stopped on its own, is not empty and holds none of the chat format's `markers`.
    """
    if not isinstance(sample, dict) or sample.get("stopped") is not True:
        return "never stopped"
    completion = str(sample.get("completion") or "")
    if not completion.strip():
        return "empty"
    for marker in markers:
        if marker in completion:
            return f"contains {marker}"
    return None
