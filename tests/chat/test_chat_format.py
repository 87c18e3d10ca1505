from chatpipe.tasks.chat.format import Turn, from_messages, render, validate
from chatpipe.tasks.ingest.sources.chat import chitchat_turns, parse_file


def parse(tmp_path, text):
    f = tmp_path / "c.txt"
    f.write_text(text, encoding="utf-8")
    return list(parse_file(f))


def test_grammar(tmp_path):
    convs = parse(tmp_path, "<|system|> Be brief.\n<|user|> hi\n<|assistant|> hello\n\n<|user|> code?\n"
                            "<|assistant|>\ndef f():\n\n    return 1\n<|endoftext|>\n"
                            "<|user|>q\n<|assistant|>a\n")
    assert [c.error for c in convs] == [None, None]
    first, second = convs
    assert [t.role for t in first.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert first.turns[-1].text == "def f():\n\n    return 1"      # blank lines inside a turn are kept
    assert second.line == 11 and second.turns == (Turn("user", "q"), Turn("assistant", "a"))
    assert render(second.turns) == "<|user|> q\n<|assistant|> a\n"


def test_round_trip_of_rendering(tmp_path):
    turns = (Turn("user", "hi there"), Turn("assistant", "line one\n\nline two"))
    (conv,) = parse(tmp_path, render(turns))
    assert conv.turns == turns


def test_invalid_conversations_are_reported_with_their_line(tmp_path):
    convs = parse(tmp_path, "\n".join([
        "<|user|> no answer", "<|endoftext|>",                         # 1
        "<|assistant|> answer first", "<|user|> hm", "<|endoftext|>",  # 3
        "<|user|> a", "<|user|> b", "<|assistant|> c", "<|endoftext|>",  # 6
        "<|user|> hi <|assistant|> inline", "<|endoftext|>",           # 10
        "<|user|> hi", "<|bot|> what", "<|endoftext|>",               # 12
        "stray text", "<|user|> hi", "<|assistant|> ok", "<|endoftext|>",  # 15
        "<|user|> x", "<|assistant|> y <|user", "<|endoftext|>",      # 19
        "<|user|>", "<|assistant|> empty question", "<|endoftext|>",  # 22
        "<|user|> a", "<|assistant|> b", "<|system|> late", "<|endoftext|>",  # 25
        "<|user|> a", "<|assistant|> b", "<|user|> and?", "<|endoftext|>",    # 29
    ]))
    got = [(c.line, c.error.split(" (")[0]) for c in convs]
    assert got == [
        (1, "no assistant turn"),
        (3, "turns do not alternate"),
        (6, "turns do not alternate"),
        (10, "marker inside turn text"),
        (12, "unknown marker"),
        (15, "text outside a turn"),
        (19, "unbalanced marker"),
        (22, "empty user turn"),
        (25, "system turn after the first turn"),
        (29, "ends with a user turn"),
    ]


def test_messages_and_aliases():
    turns, err = from_messages([{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}])
    assert err is None and [t.role for t in turns] == ["user", "assistant"]
    assert from_messages([{"role": "user", "content": "only"}])[1] == "no assistant turn"
    assert from_messages(["not a dict"])[1].startswith("message is not")
    assert validate([]) == "empty conversation"


def test_chitchat_conversion_joins_and_alternates():
    a, b = "speaker-a", "speaker-b"
    messages = [[{"text": "Hello", "sender": a}, {"text": "how are you?", "sender": a}],
                [{"text": "good", "sender": b}],
                [{"text": "and you?", "sender": b}],          # same speaker again: joined
                [{"text": "fine", "sender": a}]]               # trailing user turn: dropped
    assert chitchat_turns(messages) == [Turn("user", "Hello\nhow are you?"), Turn("assistant", "good\nand you?")]
