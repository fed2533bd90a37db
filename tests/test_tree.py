"""Conversations as trees: MessageTree's rules, and properties of random trees on a real disk.

The unit tests pin MessageTree down (children, alternatives, the active path, path_through,
linear, what it refuses). The property test drives a real ConversationStore in a scratch data
dir through random sequences of what users and kernels do: continue the conversation, regenerate
or edit (a reply to any earlier message), start a new first question, switch branches, stream a
reply in drafts and save it, or stream drafts and die. After every step it checks the file and
what a fresh reader derives from it against a plain model of the rules (nbchat/tree.py): the
active path is a root-to-leaf path and is the branch used last at every fork, every message is
reachable, appends never rewrite a byte, and every reader sees the same tree and path.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_schemas import EXAMPLE_V1, EXAMPLE_V2, assert_conversation_file_valid, lines_of

from nbchat import ConversationStore, Message, records
from nbchat.errors import InvalidValue, MessageNotFound
from nbchat.tree import MessageTree
from nbchat.types import ROLES, Conversation, Role, new_id

T0 = datetime(2025, 5, 3, 9, 30, tzinfo=timezone.utc)


def message(name: str, parent: str | None = None, role: Role = "user") -> Message:
    """A message whose id spells ``name`` (hex), so failures read as the tree they describe."""
    parent_id = None if parent is None else parent.ljust(32, "0")
    return Message(role, f"text of {name}", id=name.ljust(32, "0"), parent=parent_id)


def ids(messages: tuple[Message, ...] | list[Message]) -> list[str]:
    return [m.id.rstrip("0") or "0" for m in messages]


# The tree below:   a ─ b ─ c ─ d          (d: the first reply to c)
#                       │   └ e            (e: c's regenerated reply)
#                       └ f ─ aa           (f: b's edited follow-up, with its reply aa)
#                   bb                     (bb: a new first question)
A, B, C, D, E, F, G, H = (
    message("a"),
    message("b", "a", "assistant"),
    message("c", "b"),
    message("d", "c", "assistant"),
    message("e", "c", "assistant"),
    message("f", "b"),
    message("aa", "f", "assistant"),
    message("bb"),
)
FOREST = [A, B, C, D, E, F, G, H]


# -- MessageTree ---------------------------------------------------------------------------------


def test_children_are_the_messages_answering_one_oldest_first_and_none_gives_the_first_questions() -> None:
    tree = MessageTree(FOREST)
    assert ids(tree.children(None)) == ["a", "bb"]
    assert ids(tree.children(B.id)) == ["c", "f"]
    assert ids(tree.children(C.id)) == ["d", "e"]
    assert tree.children(D.id) == ()
    with pytest.raises(MessageNotFound):
        tree.children("f" * 32)


def test_alternatives_are_a_message_and_its_siblings_oldest_first() -> None:
    tree = MessageTree(FOREST)
    assert ids(tree.alternatives(D.id)) == ids(tree.alternatives(E.id)) == ["d", "e"]
    assert ids(tree.alternatives(F.id)) == ["c", "f"]
    assert ids(tree.alternatives(A.id)) == ["a", "bb"]
    assert tree.alternatives(G.id) == (G,)


def test_without_choices_the_active_path_follows_the_branch_saved_last() -> None:
    """bb, a new first question, was saved last: it is the whole active path."""
    tree = MessageTree(FOREST)
    assert ids(tree.path()) == ["bb"]
    assert tree.leaf() == H
    assert ids(MessageTree(FOREST[:-1]).path()) == ["a", "b", "f", "aa"]
    assert ids(MessageTree(FOREST[:5]).path()) == ["a", "b", "c", "e"]


def test_the_active_path_takes_at_every_fork_the_branch_used_most_recently() -> None:
    """last_used (a line number in the store) can lift any message; the path then runs through it
    and, below it, through what was used last there."""
    assert ids(MessageTree(FOREST, {D.id: 100}).path()) == ["a", "b", "c", "d"]
    assert ids(MessageTree(FOREST, {C.id: 100}).path()) == ["a", "b", "c", "e"]
    assert ids(MessageTree(FOREST, {C.id: 100, D.id: 99}).path()) == ["a", "b", "c", "d"]
    assert ids(MessageTree(FOREST, {A.id: 100}).path()) == ["a", "b", "f", "aa"]
    assert ids(MessageTree(FOREST, {D.id: 100, G.id: 101}).path()) == ["a", "b", "f", "aa"]


def test_path_through_a_message_is_its_ancestors_it_and_the_most_recent_branch_below() -> None:
    tree = MessageTree(FOREST)
    assert ids(tree.path_through(D.id)) == ["a", "b", "c", "d"]
    assert ids(tree.path_through(B.id)) == ["a", "b", "f", "aa"]
    assert ids(tree.path_through(C.id)) == ["a", "b", "c", "e"]
    assert ids(tree.path_through(H.id)) == ["bb"]
    assert ids(MessageTree(FOREST, {D.id: 100}).path_through(B.id)) == ["a", "b", "c", "d"]
    with pytest.raises(MessageNotFound):
        tree.path_through("f" * 32)


def test_a_tree_knows_its_messages_in_file_order() -> None:
    tree = MessageTree(FOREST)
    assert len(tree) == 8 and list(tree) == FOREST and tree.messages == tuple(FOREST)
    assert D.id in tree and "f" * 32 not in tree and None not in tree
    assert tree.get(F.id) == F
    with pytest.raises(MessageNotFound, match="no message with id"):
        tree.get("f" * 32)
    with pytest.raises(MessageNotFound):
        tree.get(None)  # type: ignore[arg-type]


def test_an_empty_tree_has_an_empty_path_and_no_leaf() -> None:
    tree = MessageTree([])
    assert tree.path() == () and tree.leaf() is None and tree.children(None) == ()


def test_linear_chains_a_list_into_one_branch() -> None:
    """Each message answers the one before, whatever parents the list had."""
    plain = [Message("user", "q"), Message("assistant", "a"), Message("user", "q2", parent=A.id)]
    tree = MessageTree.linear(plain)
    assert [m.parent for m in tree.messages] == [None, plain[0].id, plain[1].id]
    assert [m.content for m in tree.path()] == ["q", "a", "q2"]
    assert MessageTree.linear([]).path() == ()


def test_a_conversation_given_messages_only_is_one_branch() -> None:
    messages = (Message("user", "q"), Message("assistant", "a"))
    conversation = Conversation(new_id(), "Eggs", T0, T0, messages=messages)
    assert conversation.tree.messages == conversation.messages
    assert conversation.messages[1].parent == conversation.messages[0].id


def test_a_message_saved_twice_is_refused() -> None:
    with pytest.raises(InvalidValue, match="appears twice"):
        MessageTree([A, B, message("b", "a")])


@pytest.mark.parametrize(
    "messages",
    [[message("b", "a")], [B, A], [A, message("c", "9")]],
    ids=["unknown parent", "parent after child", "parent never saved"],
)
def test_a_message_answering_no_earlier_message_is_refused(messages: list[Message]) -> None:
    with pytest.raises(InvalidValue, match="not an earlier message"):
        MessageTree(messages)


def test_a_message_cannot_follow_itself() -> None:
    with pytest.raises(InvalidValue, match="cannot follow itself"):
        message("a", "a")


# -- random trees through a real store ------------------------------------------------------------


class Model:
    """The rules of nbchat/tree.py and nbchat/file_state.py, restated as plainly as possible.

    ``used`` is the last line that used each message (saved it, drafted it, selected it); the
    active path takes, at every fork, the child whose subtree holds the latest such line.
    """

    def __init__(self) -> None:
        self.parent: dict[str, str | None] = {}  # every message and open draft, in file order
        self.used: dict[str, int] = {}
        self.open: set[str] = set()  # drafts without a message: replies whose kernel died
        self.lines = 1  # the header

    def add(self, message_id: str, parent: str | None) -> None:
        self.lines += 1
        self.parent.setdefault(message_id, parent)
        self.used[message_id] = self.lines

    def latest(self, message_id: str) -> int:
        below = [self.latest(child) for child, p in self.parent.items() if p == message_id]
        return max([self.used[message_id], *below])

    def below(self, parent: str | None) -> list[str]:
        return [child for child, p in self.parent.items() if p == parent]

    def descend(self, path: list[str]) -> list[str]:
        children = self.below(path[-1] if path else None)
        while children:
            path.append(max(children, key=self.latest))
            children = self.below(path[-1])
        return path

    def path(self) -> list[str]:
        return self.descend([])

    def path_through(self, message_id: str) -> list[str]:
        ancestors: list[str] = []
        current: str | None = message_id
        while current is not None:
            ancestors.insert(0, current)
            current = self.parent[current]
        return self.descend(ancestors)


TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates: UTF-8 cannot hold them
TICK = timedelta(milliseconds=1)
KERNELS = st.integers(0, 1)
INDEX = st.integers(0, 10_000)  # which existing message, modulo how many there are
ROLE = st.sampled_from([r for r in ROLES if r != "system"])
PARTS = st.lists(TEXT, min_size=1, max_size=3)
#: Real files of versions 1 and 2: the examples and what earlier releases wrote (tests/fixtures/).
OLDER_FILES = {
    path.stem: path
    for path in (EXAMPLE_V1, EXAMPLE_V2, *sorted((Path(__file__).parent / "fixtures").glob("v[12]-*.jsonl")))
}


@settings(
    max_examples=60,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class RandomTrees(RuleBasedStateMachine):
    """Two kernels of one user write to one conversation; after each step every reader agrees."""

    def __init__(self) -> None:
        super().__init__()
        self.data_dir = Path(tempfile.mkdtemp(prefix="nbchat-tree-"))
        self.kernels = [ConversationStore(self.data_dir, "alice") for _ in range(2)]
        self.model = Model()
        self.before = b""  # the file as the last check saw it
        self.inode = 0
        self.clock = T0

    def teardown(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def now(self) -> datetime:
        self.clock += TICK
        return self.clock

    # -- the conversation to start from

    @initialize(start=st.sampled_from(["new", *OLDER_FILES]))
    def start(self, start: str) -> None:
        """A new conversation, or a real older file (rewritten at version 3 by its first append)."""
        if start == "new":
            self.cid = self.kernels[0].create("Random tree").id
        else:
            header, *lines = lines_of(OLDER_FILES[start])
            self.cid = records.parse_header(header).id
            self.kernels[0].directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(OLDER_FILES[start], self.path)
            previous = None
            for line in lines:
                saved = records.parse_message(line, records.header_version(header))
                self.model.add(saved.id, previous)
                previous = saved.id
        self.before, self.inode = self.path.read_bytes(), self.path.stat().st_ino

    @property
    def path(self) -> Path:
        return self.kernels[0].directory / f"{self.cid}.jsonl"

    def pick(self, index: int) -> str:
        every = list(self.model.parent)
        return every[index % len(every)]

    # -- what users and kernels do

    @rule(kernel=KERNELS, role=ROLE, text=TEXT)
    def continue_the_conversation(self, kernel: int, role: Role, text: str) -> None:
        """A message without a parent answers the leaf of the active path."""
        path = self.model.path()
        saved = self.kernels[kernel].append(self.cid, Message(role, text, time=self.now()))
        assert saved.parent == (path[-1] if path else None)
        self.saved(saved.id, saved.parent)

    @precondition(lambda self: self.model.parent)
    @rule(kernel=KERNELS, index=INDEX, role=ROLE)
    def regenerate_or_edit(self, kernel: int, index: int, role: Role) -> None:
        """A reply to any earlier message: a regenerated reply or an edited question, a new branch."""
        parent = self.pick(index)
        saved = self.kernels[kernel].append(self.cid, Message(role, "again", time=self.now(), parent=parent))
        assert saved.parent == parent
        self.saved(saved.id, parent)

    @rule(kernel=KERNELS)
    def new_first_question(self, kernel: int) -> None:
        question = Message("user", "a fresh start", time=self.now())
        saved = self.kernels[kernel].append(self.cid, question, new_root=True)
        assert saved.parent is None
        self.saved(saved.id, None)

    @precondition(lambda self: self.model.parent)
    @rule(kernel=KERNELS, index=INDEX)
    def switch_branch(self, kernel: int, index: int) -> None:
        """Selecting what the path already shows writes nothing; anything else appends a select line."""
        chosen = self.pick(index)
        writes = chosen not in self.model.path()
        shown = self.kernels[kernel].select(self.cid, chosen)
        if writes:
            self.model.lines += 1
            self.model.used[chosen] = self.model.lines
        assert chosen in [m.id for m in shown.messages]
        assert [m.id for m in shown.messages] == self.model.path()

    @rule(kernel=KERNELS, index=INDEX, parts=PARTS)
    def stream_a_reply_and_save_it(self, kernel: int, index: int, parts: list[str]) -> None:
        """Drafts, then the reply's message (same id): one reply, which replaces its drafts."""
        path = self.model.path()
        parent = self.pick(index) if self.model.parent and index % 2 else (path[-1] if path else None)
        reply = new_id()
        store = self.kernels[kernel]
        for part in parts:
            store.append_draft(self.cid, records.Draft(reply, parent, "m", self.now(), part, ""))
            self.model.add(reply, parent)
            self.check_appended_only()
        assert reply not in store.get(self.cid).tree  # the kernel streaming it shows it live, not as a draft
        saved = store.append(self.cid, Message("assistant", "".join(parts), id=reply, time=self.now()))
        assert saved.parent == parent  # taken from its drafts
        self.saved(reply, parent)
        assert store.get(self.cid).tree.get(reply).content == "".join(parts)

    @rule(kernel=KERNELS, parts=PARTS)
    def stream_drafts_and_die(self, kernel: int, parts: list[str]) -> None:
        """The kernel dies mid-reply: a new kernel takes its place and sees the reply as interrupted."""
        path = self.model.path()
        parent = path[-1] if path else None
        reply = new_id()
        for part in parts:
            draft = records.Draft(reply, parent, "m", self.now(), part, "")
            self.kernels[kernel].append_draft(self.cid, draft)
            self.model.add(reply, parent)
        self.model.open.add(reply)
        self.kernels[kernel].close()  # the OS lets its locks go with the process
        self.kernels[kernel] = ConversationStore(self.data_dir, "alice")
        shown = self.kernels[kernel].get(self.cid).tree.get(reply)
        assert shown.content == "".join(parts)
        assert shown.stats == {"partial": True, "interrupted": True}

    def saved(self, message_id: str, parent: str | None) -> None:
        self.model.add(message_id, parent)
        self.model.open.discard(message_id)
        assert self.model.path()[-1] == message_id  # what was just saved is the leaf shown

    # -- what holds after every step

    @invariant()
    def the_file_only_grows_once_it_is_at_version_3(self) -> None:
        self.check_appended_only()

    def check_appended_only(self) -> None:
        now, inode = self.path.read_bytes(), self.path.stat().st_ino
        if records.header_version(self.before.split(b"\n", 1)[0]) == records.TREE_VERSION:
            assert now.startswith(self.before), "an append rewrote bytes already on disk"
            assert inode == self.inode, "an append replaced the file instead of writing at its end"
        self.before, self.inode = now, inode
        assert now.count(b"\n") == self.model.lines  # one line per write, none for a no-op select

    @invariant()
    def every_reader_derives_the_same_tree_and_the_modelled_path(self) -> None:
        fresh = ConversationStore(self.data_dir, "alice").get(self.cid)
        tree = fresh.tree
        assert {m.id: m.parent for m in tree.messages} == self.model.parent  # every message is there
        assert [m.id for m in tree.messages] == list(self.model.parent)  # in file order
        assert [m.id for m in fresh.messages] == self.model.path()
        for kernel in self.kernels:  # cached readers, each having read the file in its own steps
            seen = kernel.get(self.cid)
            assert seen.tree.messages == tree.messages
            assert seen.messages == fresh.messages
        interrupted = {m.id for m in tree.messages if m.stats == {"partial": True, "interrupted": True}}
        assert interrupted == self.model.open

    @invariant()
    def the_active_path_is_a_root_to_leaf_path(self) -> None:
        tree = ConversationStore(self.data_dir, "alice").get(self.cid).tree
        assert_root_to_leaf(tree, tree.path())
        assert bool(tree.path()) == bool(len(tree))

    @invariant()
    def every_message_is_reachable_by_the_path_through_it(self) -> None:
        tree = ConversationStore(self.data_dir, "alice").get(self.cid).tree
        for saved in tree.messages:
            path = tree.path_through(saved.id)
            assert saved in path
            assert_root_to_leaf(tree, path)
            assert [m.id for m in path] == self.model.path_through(saved.id)

    @invariant()
    def the_file_is_valid_line_by_line(self) -> None:
        assert_conversation_file_valid(self.path)


def assert_root_to_leaf(tree: MessageTree, path: tuple[Message, ...]) -> None:
    """Starts at a first question, each message answers the one before, and nothing answers the last."""
    if not path:
        return
    assert path[0].parent is None
    assert all(later.parent == earlier.id for earlier, later in itertools.pairwise(path))
    assert tree.children(path[-1].id) == ()


TestRandomTrees = RandomTrees.TestCase
