"""An LLM judge ("GPT-Eval"): is a prediction a correct answer, by majority of several chat queries?

Each distinct (task, input, target, prediction) is put to an OpenAI-compatible
``POST {base_url}/chat/completions`` endpoint ``queries`` times (temperature
1); the prediction is accepted when at least ``min_yes`` replies say yes
(default: more than 2 of 5). A reply whose first word is neither yes nor no
counts as not-yes and is tallied in ``judge_invalid``. An empty prediction is
rejected without a query.

The paper's Appendix C prompt text was not available to us; the questions in
:data:`QUESTIONS` are our own, one per task, and are sent verbatim (see
:func:`messages`). Endpoint, model and key come from :meth:`JudgeConfig.from_env`
(or are passed in); with none configured, :class:`JudgeNotConfigured` says so
and nothing is scored.

The API key goes to the configured origin only: a redirect is never followed
(it could carry the key to another host), and no response body is ever shown
(it may echo the key). Every reply is checked to be a chat completion; a
malformed one stops the run with :class:`JudgeError`, after the votes already
received are saved.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
from tqdm.auto import tqdm

from headsteer.errors import ConfigError, HeadsteerError, ResultsFileError
from headsteer.paper.results import ResultsFile, Settings

ENV_BASE_URL, ENV_MODEL, ENV_KEY = "HEADSTEER_JUDGE_BASE_URL", "HEADSTEER_JUDGE_MODEL", "HEADSTEER_JUDGE_API_KEY"
SYSTEM = "You grade answers to short word tasks. Reply with one word: yes or no."
QUESTIONS = {
    "antonym": "Is “{prediction}” an antonym (a word of opposite meaning) of the English word “{input}”?",
    "synonym": "Is “{prediction}” a synonym (a word of the same meaning) of the English word “{input}”?",
    "english-french": "Is “{prediction}” a correct French translation of the English word “{input}”?",
    "english-german": "Is “{prediction}” a correct German translation of the English word “{input}”?",
}
GENERIC = "In the task “{task}”, is “{prediction}” a correct answer for the input “{input}”?"
REFERENCE = " One accepted answer is “{target}”; other correct answers count too. Answer yes or no."
KEY = ["task", "input", "target", "prediction"]
VOTE_COLUMNS = [*KEY, "judge_yes", "judge_invalid"]
# What a predictions file must hold: each prediction's identity and the (task, method, seed) it scores.
PREDICTION_COLUMNS = ["task", "method", "seed", "input", "target", "prediction"]


class JudgeNotConfigured(RuntimeError):
    """No endpoint configured: the judge metric is skipped, never guessed."""


class JudgeError(HeadsteerError, RuntimeError):
    """The endpoint answered with an error, a redirect or a malformed reply (or not at all) after every retry."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where to send the queries and how to count them. The key is read from ``api_key_env`` when sending."""

    base_url: str
    model: str
    api_key_env: str = ENV_KEY
    queries: int = 5
    min_yes: int = 3
    temperature: float = 1.0
    timeout_s: float = 60.0
    retries: int = 3
    workers: int = 4

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"judge base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ConfigError("judge model must be named")
        if not 1 <= self.min_yes <= self.queries:
            raise ConfigError(
                "need 1 <= min_yes <= queries (--min-yes, --queries), "
                f"got min_yes={self.min_yes}, queries={self.queries}"
            )
        if self.retries < 0 or self.workers < 1 or self.timeout_s <= 0:
            raise ConfigError("retries must be >= 0, workers >= 1 and timeout_s > 0")

    @classmethod
    def from_env(cls) -> JudgeConfig:
        base_url, model = os.environ.get(ENV_BASE_URL), os.environ.get(ENV_MODEL)
        if not base_url or not model:
            raise JudgeNotConfigured(
                f"GPT-Eval skipped: no judge endpoint configured. Set {ENV_BASE_URL} (an OpenAI-compatible base "
                f"URL, e.g. https://api.openai.com/v1) and {ENV_MODEL}, and {ENV_KEY} if the endpoint needs a key."
            )
        return cls(base_url=base_url, model=model)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as the votes file's settings record it."""
        return asdict(self)


def messages(task: str, input: str, target: str, prediction: str) -> list[dict[str, str]]:
    """The chat sent for one prediction: the task's question and the reference answer."""
    question = QUESTIONS.get(task, GENERIC).format(task=task, input=input, prediction=prediction)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question + REFERENCE.format(target=target)},
    ]


def parse_vote(reply: str) -> bool | None:
    """True for yes, False for no (the reply's first word, any case or punctuation), else None."""
    words = reply.strip().split()
    word = words[0].strip(".,!:;\"'*").casefold() if words else ""
    return {"yes": True, "no": False}.get(word)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the request carries the API key, and the new location may be any host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise JudgeError(
            f"judge endpoint {req.full_url} answered HTTP {code}, redirecting to {_origin(newurl)}; not followed "
            f"(the API key is sent to {ENV_BASE_URL}'s URL only): set {ENV_BASE_URL} to the URL that answers"
        )


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def reply_content(raw: bytes, url: str) -> str:
    """The text of a chat-completions reply; a JudgeError (without the body, which may echo the key) if malformed."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        kind = "an HTML page" if raw.lstrip()[:1] == b"<" else f"{len(raw)} bytes of non-JSON"
        raise JudgeError(f"judge endpoint {url}: the reply is {kind}, not a chat completion") from None
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        kind = next((str(error[k]) for k in ("type", "code") if isinstance(error, dict) and error.get(k)), "unnamed")
        raise JudgeError(
            f"judge endpoint {url}: answered with an error object ({kind}); its text is not shown, as it "
            "may quote the API key"
        )
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise JudgeError(f"judge endpoint {url}: the reply has no 'choices'")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content", "") if isinstance(message, dict) else None
    if content is None and isinstance(message, dict):
        return ""  # an empty completion (e.g. a refusal): counts as neither yes nor no
    if not isinstance(content, str):
        raise JudgeError(f"judge endpoint {url}: the reply's choices[0].message.content is not a string")
    return content


def chat(config: JudgeConfig, chat_messages: list[dict[str, str]]) -> str:
    """One completion's text; retries (with backoff) on 429, 5xx and connection errors."""
    body = json.dumps(
        {"model": config.model, "messages": chat_messages, "temperature": config.temperature, "max_tokens": 4}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get(config.api_key_env):
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(config.base_url.rstrip("/") + "/chat/completions", body, headers)
    for attempt in range(config.retries + 1):
        try:
            with _OPENER.open(request, timeout=config.timeout_s) as response:
                raw = response.read()
            return reply_content(raw, request.full_url)
        except urllib.error.HTTPError as err:  # the body is not read: it may echo the key
            retry, problem = err.code == 429 or err.code >= 500, f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, TimeoutError) as err:
            retry, problem = True, f"no answer ({getattr(err, 'reason', err)})"
        if not retry or attempt == config.retries:
            raise JudgeError(f"judge endpoint {request.full_url}: {problem}")
        time.sleep(min(2.0**attempt, 30.0))
    raise AssertionError("unreachable")


def votes(config: JudgeConfig, task: str, input: str, target: str, prediction: str) -> tuple[int, int]:
    """(yes, invalid) over ``config.queries`` queries; (0, 0) for an empty prediction."""
    if not prediction.strip():
        return 0, 0
    parsed = [parse_vote(chat(config, messages(task, input, target, prediction))) for _ in range(config.queries)]
    return sum(v is True for v in parsed), sum(v is None for v in parsed)


def judge_predictions(
    predictions: pd.DataFrame,
    config: JudgeConfig,
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """``predictions`` with ``judge_yes``, ``judge_invalid`` and ``gpt_eval`` (accepted) columns.

    With ``out``, votes are saved as they come (every ``config.workers`` × 8 items) and a rerun skips them.
    """
    settings = Settings(
        {
            "judge": {**config.to_dict(), "workers": None},
            "system": SYSTEM,
            "questions": QUESTIONS,
            "generic": GENERIC,
            "reference": REFERENCE,
        }
    )
    store = ResultsFile(Path(out), tuple(VOTE_COLUMNS), tuple(KEY), settings, text=True) if out else None
    done = store.open() if store else pd.DataFrame(columns=VOTE_COLUMNS)
    done = done.astype(dict.fromkeys(KEY, str))
    unique = predictions[KEY].astype(str).drop_duplicates()
    todo = unique.merge(done[KEY], how="left", indicator=True).query("_merge == 'left_only'")[KEY]
    rows = list(todo.itertuples(index=False))
    batch = config.workers * 8
    with ThreadPoolExecutor(config.workers) as pool, tqdm(total=len(rows), desc="judge", disable=not progress) as bar:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            futures = [pool.submit(votes, config, r.task, r.input, r.target, r.prediction) for r in chunk]
            tallies, failure = [], None
            for row, future in zip(chunk, futures):  # every item that finished is kept, even if another failed
                try:
                    tallies.append((*row, *future.result()))
                except JudgeError as err:
                    failure = failure or err
            new = pd.DataFrame(tallies, columns=VOTE_COLUMNS)
            done = store.add(new) if store else pd.concat([done, new], ignore_index=True)
            if failure is not None:
                raise failure
            bar.update(len(chunk))
    judged = predictions.astype(dict.fromkeys(KEY, str)).merge(done, on=KEY, how="left")
    return judged.assign(gpt_eval=judged["judge_yes"] >= config.min_yes)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV (e.g. a table's ``OUT.predictions.csv``), checked to have every column the judge needs."""
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"predictions file {path} does not exist")
    try:
        frame = pd.read_csv(path, keep_default_na=False)  # an empty prediction stays ""
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"predictions file {path} is not a readable CSV ({type(err).__name__})") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsFileError(f"predictions file {path} lacks the columns {missing}; it needs {PREDICTION_COLUMNS}")
    return frame
