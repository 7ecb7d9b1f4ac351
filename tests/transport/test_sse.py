from mlxd.transport import sse


def test_event_is_one_data_line_of_compact_json():
    assert sse.event({"a": "x\ny", "b": "é"}) == 'data: {"a":"x\\ny","b":"é"}\n\n'.encode()


def test_done():
    assert sse.DONE == b"data: [DONE]\n\n"


def test_events_parse_back_like_a_client():
    import json

    stream = sse.event({"n": 1}) + sse.event({"n": 2, "s": "a\nb"}) + sse.DONE
    datas = []
    for block in stream.decode().split("\n\n"):
        lines = [ln[len("data: ") :] for ln in block.split("\n") if ln.startswith("data: ")]
        if lines:
            datas.append("\n".join(lines))
    assert [json.loads(d)["n"] for d in datas[:-1]] == [1, 2]
    assert datas[-1] == "[DONE]"


def test_named_event_carries_its_type_line():
    assert sse.named_event("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
