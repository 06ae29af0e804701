"""The LLM judge against a loopback server that speaks the OpenAI chat-completions protocol."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pandas as pd
import pytest

from headsteer.cli import main
from headsteer.errors import ConfigError
from headsteer.paper import judge

# Replies per prediction, in order: "cool" gets 3 yes of 5 (accepted), "warm" 2 (rejected).
SCRIPT = {
    "cold": ["Yes."] * 5,
    "cool": ["yes", "No", "YES!", "no", "Yes, it is"],
    "warm": ["yes", "yes", "no", "no", "no"],
    "tepid": ["Maybe", "I think so", "yes", "yes", "No."],
}


class FakeChat(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict]] = []
    fail_first: ClassVar[list[int]] = []  # HTTP codes to answer before serving normally
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            code = self.fail_first.pop(0) if self.fail_first else 200
            prediction = re.search(r"Is “(.*?)”", body["messages"][1]["content"]).group(1)
            seen = sum(c["prediction"] == prediction for c in self.calls)
            self.calls.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "prediction": prediction, "body": body}
            )
        if code != 200:
            self.send_response(code), self.end_headers(), self.wfile.write(b'{"error": "nope"}')
            return
        reply = SCRIPT[prediction][seen % 5]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200), self.send_header("Content-Type", "application/json"), self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(monkeypatch):
    FakeChat.calls, FakeChat.fail_first = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv(judge.ENV_BASE_URL, f"http://127.0.0.1:{httpd.server_port}/v1")
    monkeypatch.setenv(judge.ENV_MODEL, "fake-judge")
    monkeypatch.setenv(judge.ENV_KEY, "sk-test")
    yield httpd
    httpd.shutdown()


def predictions(words=("cold", "cool", "warm", "tepid", "")) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": "antonym",
            "method": "Δ (ours)",
            "seed": 0,
            "input": "hot",
            "target": "cold",
            "prediction": list(words),
        }
    )


def test_more_than_two_of_five_yes_accepts(server):
    config = judge.JudgeConfig.from_env()
    judged = judge.judge_predictions(predictions(), config, progress=False)
    assert judged["judge_yes"].tolist() == [5, 3, 2, 2, 0]
    assert judged["judge_invalid"].tolist() == [0, 0, 0, 2, 0]
    assert judged["gpt_eval"].tolist() == [True, True, False, False, False]
    assert len(FakeChat.calls) == 4 * 5  # the empty prediction is not sent
    call = FakeChat.calls[0]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "fake-judge" and call["body"]["temperature"] == 1.0
    assert "antonym" in call["body"]["messages"][1]["content"] and "“hot”" in call["body"]["messages"][1]["content"]


def test_votes_are_saved_and_a_rerun_sends_nothing_new(server, tmp_path):
    config, out = judge.JudgeConfig.from_env(), tmp_path / "votes.csv"
    first = judge.judge_predictions(predictions(), config, out, progress=False)
    sent = len(FakeChat.calls)
    twice = pd.concat([predictions(), predictions().assign(method="10-shot")], ignore_index=True)
    again = judge.judge_predictions(twice, config, out, progress=False)
    assert len(FakeChat.calls) == sent and len(again) == 10  # duplicates across methods share their votes
    assert again["gpt_eval"].tolist() == first["gpt_eval"].tolist() * 2
    with pytest.raises(ValueError, match="other settings"):
        judge.judge_predictions(predictions(), judge.JudgeConfig(config.base_url, "other-model"), out, progress=False)


def test_server_errors_are_retried_and_client_errors_named(server, monkeypatch):
    monkeypatch.setattr(judge.time, "sleep", lambda s: None)
    config = judge.JudgeConfig.from_env()
    FakeChat.fail_first = [503, 429]
    assert judge.votes(config, "antonym", "hot", "cold", "cold") == (5, 0)
    FakeChat.fail_first = [401]
    with pytest.raises(judge.JudgeError, match="HTTP 401"):
        judge.votes(config, "antonym", "hot", "cold", "cold")


def test_unconfigured_judge_is_skipped_with_a_message(monkeypatch, tmp_path, capsys):
    for name in (judge.ENV_BASE_URL, judge.ENV_MODEL):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(judge.JudgeNotConfigured, match=judge.ENV_BASE_URL):
        judge.JudgeConfig.from_env()
    path = tmp_path / "p.csv"
    predictions().to_csv(path, index=False)
    assert main(["judge", str(path), "--out", str(tmp_path / "votes.csv")]) == 0
    assert "GPT-Eval skipped" in capsys.readouterr().err and not (tmp_path / "votes.csv").exists()


def test_cli_judge_writes_votes_and_a_gpt_eval_table(server, tmp_path, capsys):
    path, out = tmp_path / "p.csv", tmp_path / "votes.csv"
    predictions().to_csv(path, index=False)
    assert main(["judge", str(path), "--out", str(out)]) == 0
    assert len(pd.read_csv(out, keep_default_na=False)) == 5
    text = out.with_suffix(".md").read_text()
    assert "GPT-Eval" in text and "0.400 ± 0.000" in text  # 2 of 5 accepted, one seed


@pytest.mark.parametrize("reply, vote", [("Yes.", True), ("no", False), ("**No**", False), ("", None), ("Yesno", None)])
def test_parse_vote(reply, vote):
    assert judge.parse_vote(reply) is vote


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(queries=5, min_yes=6), "min_yes <= queries"),
        (dict(min_yes=0), "min_yes <= queries"),
        (dict(base_url="localhost:8000"), "must start with http"),
        (dict(model=""), "model must be named"),
        (dict(workers=0), "workers >= 1"),
        (dict(retries=-1), "retries must be >= 0"),
        (dict(timeout_s=0.0), "timeout_s > 0"),
    ],
)
def test_config_is_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        judge.JudgeConfig(**{"base_url": "http://x/v1", "model": "m", **changes})


class Redirector(BaseHTTPRequestHandler):
    """Answers every POST with a 307 to ``target`` (another origin)."""

    target = ""

    def do_POST(self):
        self.send_response(307), self.send_header("Location", self.target), self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_never_followed_so_the_key_stays_home(server, monkeypatch, tmp_path, capsys):
    """A redirect to another origin must not carry the key there, nor count that host's replies as votes."""
    other = f"http://127.0.0.1:{server.server_port}/v1/chat/completions"  # the fake judge plays "another host"
    Redirector.target = other
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(judge.ENV_BASE_URL, f"http://localhost:{httpd.server_port}/v1")
        path = tmp_path / "p.csv"
        predictions().to_csv(path, index=False)
        assert main(["judge", str(path), "--out", str(tmp_path / "votes.csv")]) == 2
    finally:
        httpd.shutdown()
    err = capsys.readouterr().err
    assert FakeChat.calls == [], "no request may reach the redirect's target"
    assert "HTTP 307" in err and "not followed" in err and "sk-test" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1  # one line (beside the progress bar)


class Malformed(BaseHTTPRequestHandler):
    """Answers yes to the first ``good`` requests, then with ``bad`` (status 200)."""

    bad, good, served = b"", 0, 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            Malformed.served += 1
            ok = Malformed.served <= Malformed.good
        body = json.dumps({"choices": [{"message": {"content": "yes"}}]}).encode() if ok else Malformed.bad
        self.send_response(200), self.end_headers(), self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "body, message",
    [
        (
            b'{"error": {"message": "bad key sk-test", "type": "invalid_request_error"}}',
            "error object (invalid_request_error)",
        ),
        (b'{"choices": []}', "no 'choices'"),
        (b'{"choices": [{"message": {"content": 3}}]}', "not a string"),
        (b"<html><body>Login</body></html>", "an HTML page"),
        (b"[1, 2]", "no 'choices'"),
    ],
)
def test_malformed_replies_stop_with_a_clear_error_and_keep_the_votes_received(monkeypatch, tmp_path, body, message):
    Malformed.bad, Malformed.good, Malformed.served = body, 5, 0  # the first prediction's 5 queries succeed
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Malformed)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out = tmp_path / "votes.csv"
    try:
        config = judge.JudgeConfig(f"http://127.0.0.1:{httpd.server_port}/v1", "fake-judge", workers=1)
        with pytest.raises(judge.JudgeError, match=re.escape(message)) as caught:
            judge.judge_predictions(predictions(("cold", "cool")), config, out, progress=False)
    finally:
        httpd.shutdown()
    assert "sk-test" not in str(caught.value), "a reply's text may echo the key: never shown"
    kept = pd.read_csv(out, keep_default_na=False)
    assert kept["prediction"].tolist() == ["cold"] and kept["judge_yes"].tolist() == [5]


def test_client_errors_do_not_show_the_response_body(server):
    FakeChat.fail_first = [401]
    with pytest.raises(judge.JudgeError) as caught:
        judge.votes(judge.JudgeConfig.from_env(), "antonym", "hot", "cold", "cold")
    assert "HTTP 401" in str(caught.value) and "nope" not in str(caught.value)


def test_a_predictions_file_missing_a_column_is_refused_by_name(server, tmp_path, capsys):
    path = tmp_path / "p.csv"
    predictions().drop(columns=["target"]).to_csv(path, index=False)
    assert main(["judge", str(path), "--out", str(tmp_path / "votes.csv")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'target'" in err and FakeChat.calls == []
    assert not (tmp_path / "votes.csv").exists()
