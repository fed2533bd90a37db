"""An encrypted account's search index is built in the background at login, not at the first search.

Its index lives in memory only (a file would hold the words in clear), so every login starts
without one; building it for a long history takes seconds. The session starts that work as the
login completes, so a search made once the user is in answers at once.
"""

from __future__ import annotations

from collections.abc import Callable

from polling import wait_until

from conftest import PASSWORD, another_kernel, chatting
from nbchat import ChatSession, Message
from nbchat.testing.ollama_server import OllamaTestServer

CONVERSATIONS = 40


def write_history(session: ChatSession) -> None:
    """``CONVERSATIONS`` conversations of ten messages each, and the one ``chatting`` starts."""
    chatting(session, model=None)
    conversations = another_kernel(session.config)
    for number in range(CONVERSATIONS):
        conversation = conversations.create(f"trip {number}")
        for turn in range(5):
            conversations.append(conversation.id, Message("user", f"fjord {number} question {turn}"))
            conversations.append(conversation.id, Message("assistant", f"glacier {number} answer {turn}"))
    session.logout()


def test_a_login_of_an_encrypted_account_builds_its_index_before_any_search(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    write_history(make_session(server, "alice"))
    session = make_session(server)
    session.login("alice", PASSWORD)
    wait_until(lambda: session.search_ready, seconds=30)  # no search was asked for
    hits = session.search("glacier 17")
    assert hits and hits[0].title == "trip 17"
    folder = session.config.data_dir / "conversations" / "alice"
    assert not list(folder.glob(".search*")), "still in memory only"


def test_a_clear_account_keeps_its_index_file_and_starts_nothing_at_login(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    """A clear account's index is a file that outlives the kernel: nothing to rebuild at login."""
    write_history(make_session(server, "alice", encrypted=False))
    session = make_session(server, encrypted=False)
    session.login("alice", PASSWORD)
    assert not session.search_ready, "nothing built it: there is no index file yet"
    assert session.search("glacier 17")[0].title == "trip 17"
    assert session.search_ready
    assert list((session.config.data_dir / "conversations" / "alice").glob(".search.sqlite"))


def test_a_logout_during_the_build_ends_it_quietly(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    write_history(make_session(server, "alice"))
    session = make_session(server)
    session.login("alice", PASSWORD)
    session.logout()  # while the index may still be building: the thread stops, nothing raised
    session.login("alice", PASSWORD)
    wait_until(lambda: session.search_ready, seconds=30)
    assert session.search("fjord 31")[0].title == "trip 31"
