"""Property tests (hypothesis): whatever arrives, the answer is a clear refusal or a stored
message, never a 500; and every rendered row reads back as exactly what was sent."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp import chat, create_app
from webapp.rendering import WireForms

from .conftest import TEST_CONFIG, _fresh_schema
from .html import csrf_token, rows
from .support import LiveServer
from .wsclient import WSClient

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any code point at all: control characters, lone surrogates, private use, emoji.
any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=300)
long_text = st.text(min_size=1990, max_size=2100)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.fixed_dictionaries({"handle": any_text, "message": any_text | long_text}),
    st.fixed_dictionaries({"handle": json_values, "message": json_values}),
    json_values,
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    app = create_app({**TEST_CONFIG, "RATE_LIMIT": "0",
                      "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/f.sqlite3"})
    _fresh_schema()
    client = app.test_client()
    client.get("/fuzz/")
    return client


@FUZZ
@given(body=bodies)
def test_api_bodies_are_stored_or_refused_never_a_500(fuzz_client, body):
    raw = json.dumps(body, ensure_ascii=True)  # lone surrogates travel as \ud800 escapes
    response = fuzz_client.post("/api/rooms/fuzz/messages", data=raw, content_type="application/json")
    assert response.status_code in (201, 400, 413, 422), response.status_code
    if response.status_code == 201:
        stored = response.get_json()
        assert stored["handle"] == body["handle"].strip()
        assert stored["message"] == body["message"].replace("\r\n", "\n")
    else:
        assert response.get_json()["error"]


@FUZZ
@given(raw=st.binary(max_size=400) | any_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_api_bodies_that_are_not_even_json(fuzz_client, raw):
    response = fuzz_client.post("/api/rooms/fuzz/messages", data=raw, content_type="application/json")
    assert response.status_code in (201, 400, 422)


@FUZZ
@given(handle=any_text, message=any_text | long_text)
def test_form_posts_are_stored_or_refused_never_a_500(fuzz_client, handle, message):
    token = csrf_token(fuzz_client.get("/fuzz/").get_data(as_text=True))
    data = {"csrf_token": token, "handle": handle.encode("utf-8", "surrogatepass"),
            "message": message.encode("utf-8", "surrogatepass")}
    response = fuzz_client.post("/fuzz/messages", data=data)
    assert response.status_code in (303, 400, 422)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """One real server for every example (a server per example would take minutes)."""
    server = LiveServer(tmp_path_factory.mktemp("fuzz-live"), env={"RATE_LIMIT": "0"}).start()
    server.open_room("fuzz")
    yield server
    server.stop()


# Text frames as a client may send them (a lone surrogate cannot travel in UTF-8: it
# arrives as U+FFFD), and binary frames.
socket_frames = (any_text | bodies.map(json.dumps)).map(
    lambda text: text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) | st.binary(max_size=200)


@pytest.mark.live
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=socket_frames)
def test_frames_over_a_real_socket_get_one_answer_and_never_close_it(fuzz_server, frame):
    """Over a real socket: each frame is answered once, with a reason or the stored
    message as it was sent; the socket stays open (a ping then still gets an echo)."""
    with WSClient(fuzz_server.ws_url("/chat/fuzz/")) as ws:
        ws.send(frame)
        answer = json.loads(ws.recv(timeout=5))
        if "error" in answer:
            assert answer["error"] and set(answer) == {"error"}
        else:
            sent = json.loads(frame)
            assert answer["handle"] == sent["handle"].strip() and answer["message"] == sent["message"].replace(
                "\r\n", "\n")
        ws.send(json.dumps({"handle": "fuzz", "message": "still open"}))
        assert json.loads(ws.recv(timeout=5))["message"] == "still open"


@FUZZ
@given(frame=any_text | bodies.map(json.dumps))
def test_socket_frames_are_read_or_refused_with_a_reason(frame):
    try:
        data = json.loads(frame)
    except ValueError:
        return  # the socket answers "not valid JSON" (tested live)
    try:
        handle, message = chat.parse_fields(data)
        chat.clean_handle(handle, 50)
        chat.clean_message(message, 2000)
    except chat.BadInput as exc:
        assert str(exc)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('r')}/r.sqlite3"})
    return WireForms(app.jinja_env)


@FUZZ
@given(handle=st.text(min_size=1, max_size=50), message=any_text)
def test_every_rendered_row_reads_back_as_what_was_sent(forms, handle, message):
    try:
        handle = chat.clean_handle(handle, 50)
        message = chat.clean_message(message, 2000)
    except chat.BadInput:
        return
    data = {"id": 7, "room": "r", "handle": handle, "message": message, "timestamp": "2026-01-02T03:04:05+00:00"}
    row = forms.row(data)
    assert "\n" not in row and "\r" not in row  # one line: one event-stream data: line
    assert rows(row) == [(7, handle, message)]
    event = forms.encode("sse", "message", data).decode()
    assert event.count("\n") == 4 and event.endswith("\n\n")
