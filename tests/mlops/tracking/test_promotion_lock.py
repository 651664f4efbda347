"""One promotion at a time per registered model: two `medtl promote` runs at once register one version and
write a history whose every entry starts where the previous one ended; a held lock makes the other wait,
then give up in one line; a crashed promoter's lock expires."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from medtl.errors import UserError
from medtl.mlops.tracking import champion as C
from medtl.mlops.tracking import promote as P
from medtl.mlops.tracking.promote import history, promote

MODEL = "finetuned-demo-binary-resnet18"


def _at_once(*calls):
    """Run the calls in threads released together; their results (or exceptions), in order."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, call):  # noqa: ANN001
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001 - returned and asserted by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _slow_register(monkeypatch, seconds: float = 0.3):
    """Registration takes a moment, as a real one (logging the model, uploading best.pt) does."""
    register = P._register

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003
        time.sleep(seconds)
        return register(*args, **kwargs)

    monkeypatch.setattr(P, "_register", slow)


def test_two_promotions_at_once_register_one_version_and_chain_the_history(gated, monkeypatch):
    uri, client, _ = gated
    _slow_register(monkeypatch)
    first, second = _at_once(lambda: promote("gate", tracking_uri=uri), lambda: promote("gate", tracking_uri=uri))
    assert sorted(r[0].action for r in (first, second)) == ["kept", "moved"]
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    moved, kept = history(MODEL, uri)
    assert (moved.action, moved.from_version, moved.to_version) == ("moved", None, "1")
    assert (kept.action, kept.from_version, kept.to_version) == ("kept", "1", "1")
    assert C.LOCK_TAG not in client.get_registered_model(MODEL).tags  # released


def test_without_the_lock_both_would_move(gated, monkeypatch):
    """The race the lock closes, shown: with it replaced by nothing, both promoters see no holder and both
    register the run; then both move the alias from "none", or one of them fails setting it (MLflow's SQL
    store looks an alias up, then inserts it)."""
    uri, client, _ = gated
    _slow_register(monkeypatch, 1.0)  # both decide long before either has moved the alias
    monkeypatch.setattr(P, "promotion_lock", lambda client, name, wait_s: contextlib.nullcontext())
    results = _at_once(lambda: promote("gate", tracking_uri=uri), lambda: promote("gate", tracking_uri=uri))
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
    failed = [r for r in results if isinstance(r, Exception)]
    moves = [e.from_version for e in history(MODEL, uri)]
    assert (failed, moves) == ([], [None, None]) or (len(failed), moves) == (1, [None])


def test_a_held_lock_makes_the_next_promotion_wait_then_give_up_in_one_line(gated, monkeypatch):
    uri, client, _ = gated
    client.create_registered_model(MODEL)
    client.set_registered_model_tag(MODEL, C.LOCK_TAG, f"other {time.time() + 600:.3f} alice")
    monkeypatch.setenv("MEDTL_PROMOTION_WAIT_S", "0.5")
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        promote("gate", tracking_uri=uri)
    assert time.monotonic() - started >= 0.5
    message = str(info.value)
    assert "\n" not in message and f"{MODEL!r} is being promoted by alice" in message and "MEDTL_PROMOTION_WAIT_S" in message
    assert history(MODEL, uri) == [] and not client.search_model_versions(f"name = '{MODEL}'")
    assert client.get_registered_model(MODEL).tags[C.LOCK_TAG].startswith("other ")  # not ours to remove


def test_an_expired_lock_is_taken_over_and_released(gated):
    uri, client, _ = gated
    client.create_registered_model(MODEL)
    client.set_registered_model_tag(MODEL, C.LOCK_TAG, f"crashed {time.time() - 1:.3f} bob")
    (moved,) = promote("gate", tracking_uri=uri)
    assert moved.action == "moved" and C.LOCK_TAG not in client.get_registered_model(MODEL).tags


def test_a_lock_write_lost_to_another_waits_for_it(gated, monkeypatch):
    """Two promoters writing the free lock at the same moment: MLflow answers the second BAD_REQUEST (it looks
    the tag up, then inserts it); that promoter waits for the winner instead of failing."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    _, client, _ = gated
    client.create_registered_model(MODEL)
    write = client.set_registered_model_tag

    def lost(name, key, value):  # noqa: ANN001
        write(name, key, f"winner {time.time() + 0.3:.3f} carol")  # the other promoter's write went first
        raise MlflowException("UNIQUE constraint failed: registered_model_tags", error_code=BAD_REQUEST)

    monkeypatch.setattr(client, "set_registered_model_tag", lost)
    with pytest.raises(UserError, match="being promoted by carol"), C.promotion_lock(client, MODEL, wait_s=0.1, settle_s=0):
        pass


def test_the_lock_is_released_when_the_promotion_fails(gated):
    _, client, _ = gated
    client.create_registered_model(MODEL)
    with pytest.raises(RuntimeError, match="registration failed"), C.promotion_lock(client, MODEL, settle_s=0):
        assert C.lock_of(client, MODEL).by  # held, with who holds it
        raise RuntimeError("registration failed")
    assert C.lock_of(client, MODEL) is None


def test_a_mistyped_wait_fails_before_anything_is_written(gated, monkeypatch):
    uri, client, _ = gated
    monkeypatch.setenv("MEDTL_PROMOTION_WAIT_S", "soon")
    with pytest.raises(UserError, match="MEDTL_PROMOTION_WAIT_S must be a number of seconds"):
        promote("gate", tracking_uri=uri)
    assert not client.search_registered_models()
