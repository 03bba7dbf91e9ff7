"""Property tests of the codec: every event survives every stored form, hashes included."""

from __future__ import annotations

from datetime import UTC, datetime

import bson
import pytest
from bson.codec_options import CodecOptions
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

import taskflow.events.task_events
import taskflow.events.user_events  # noqa: F401  (register every event type)
from taskflow.events.base import registered_events
from taskflow.events.chain import HashChain
from taskflow.events.codec import (
    commit_from_document,
    commit_from_json,
    commit_to_document,
    commit_to_json,
    decode_event,
    decode_events,
    encode_event,
    to_millis,
)
from taskflow.events.records import Commit, Metadata
from taskflow.events.sealing import ERASED, SEALED, SealBrokenError, open_event, seal_event
from taskflow.events.task_events import TaskRenamed
from tests import sample_events  # noqa: F401  (and the test-only ones)
from tests.strategies import aware_datetimes, events_of

CHAIN = HashChain(b"codec-test-key")
OPTIONS: CodecOptions[dict[str, object]] = CodecOptions(tz_aware=True)


def _commit(events: list[object], recorded_at: datetime) -> Commit:
    stored = tuple(encode_event(e, i + 1) for i, e in enumerate(events))  # type: ignore[arg-type]
    unsigned = Commit(
        commit_id="s:1",
        stream_id="s",
        first_version=1,
        last_version=len(stored),
        position=7,
        recorded_at=to_millis(recorded_at),
        events=stored,
        metadata=Metadata(actor="a", request_id="r", correlation_id="c", causation_id=None),
        idempotency="~s:1",
    )
    return unsigned.model_copy(update={"hash": CHAIN.sign(unsigned)})


@pytest.mark.parametrize("event_type", sorted(registered_events()))
@given(data=st.data(), recorded_at=aware_datetimes)
def test_every_event_round_trips_through_bson_and_json(
    event_type: str, data: st.DataObject, recorded_at: datetime
) -> None:
    """A commit of any event reads back equal from BSON and from JSON, and its hash still holds."""
    event = data.draw(events_of(registered_events()[event_type]))
    commit = _commit([event], recorded_at)
    raw = bson.encode(commit_to_document(commit))
    from_bson = commit_from_document(bson.decode(raw, codec_options=OPTIONS))
    from_json = commit_from_json(commit_to_json(commit))
    for copy in (from_bson, from_json):
        assert copy == commit
        assert decode_events(copy) == [event]
        assert CHAIN.verify_stream([copy]) is None


def test_recorded_time_keeps_milliseconds_in_utc() -> None:
    """Commit times are stored at BSON's precision, so every copy of a commit agrees."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    assert to_millis(moment) == datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


SUBJECT = "owner-1"
DATA_KEY = AESGCM(bytes(range(32)))
PERSONAL = sorted(name for name, cls in registered_events().items() if cls.personal_fields)


@pytest.mark.parametrize("event_type", PERSONAL)
@given(data=st.data(), recorded_at=aware_datetimes)
def test_sealed_events_hold_no_personal_field_and_open_to_the_same_event(
    event_type: str, data: st.DataObject, recorded_at: datetime
) -> None:
    """Sealed, an event's personal fields are gone from its stored payload; the hash chain holds
    over the sealed form (no key needed); opened with the key, it decodes to the same event."""
    event = data.draw(events_of(registered_events()[event_type]))
    sealed = seal_event(encode_event(event, 1), SUBJECT, 1, DATA_KEY)
    assert not set(event.personal_fields) & set(sealed.data)
    commit = _signed(_commit([event], recorded_at).model_copy(update={"events": (sealed,)}))
    stored = commit_from_document(bson.decode(bson.encode(commit_to_document(commit)), OPTIONS))
    assert CHAIN.verify_stream([stored]) is None
    [opened] = [open_event(e, DATA_KEY) for e in stored.events]
    assert decode_event(opened) == event


@pytest.mark.parametrize("event_type", PERSONAL)
@given(data=st.data())
def test_without_its_key_an_event_decodes_with_its_personal_fields_erased(
    event_type: str, data: st.DataObject
) -> None:
    """Opened without a key (the subject was erased), the personal fields are listed as erased
    and decode to "" or (); every other field is as it was."""
    event = data.draw(events_of(registered_events()[event_type]))
    opened = open_event(seal_event(encode_event(event, 1), SUBJECT, 1, DATA_KEY), None)
    assert opened.data[ERASED] == list(event.personal_fields)
    decoded = decode_event(opened)
    for name in type(event).model_fields:
        expected = getattr(event, name)
        if name in event.personal_fields:
            expected = () if isinstance(expected, tuple) else ""
        assert getattr(decoded, name) == expected


def test_a_ciphertext_does_not_open_for_another_subject() -> None:
    """The subject is bound into the ciphertext: moved to another user's stream it fails."""
    event = TaskRenamed(task_id="t", occurred_at=datetime(2026, 1, 1, tzinfo=UTC), title="secret")
    sealed = seal_event(encode_event(event, 1), SUBJECT, 1, DATA_KEY)
    envelope = {**sealed.data[SEALED], "subject": "someone-else"}
    moved = sealed.model_copy(update={"data": {**sealed.data, SEALED: envelope}})
    with pytest.raises(SealBrokenError):
        open_event(moved, DATA_KEY)


def _signed(commit: Commit) -> Commit:
    unsigned = commit.model_copy(update={"hash": ""})
    return unsigned.model_copy(update={"hash": CHAIN.sign(unsigned)})
