"""The review workflow: which status change each role may make, and edits that need a new review.

draft -> in_review (editor submits) -> approved | rejected (reviewer, with a comment);
rejected or retired -> draft (editor reopens); approved -> retired (reviewer). Only approved phrases are
indexed and served. The comment is the ``why`` of the history row, so the review trail is the history.
The command line (`repliq bank approve|retire|edit`) keeps its direct status changes for scripting.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.bank.schema import BankError, Phrase
from core.bank.store import PhraseBank
from dialog.editor.users import User


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    sources: tuple[str, ...]
    target: str
    role: str
    needs_comment: bool = False


ACTIONS = {action.name: action for action in (
    Action("submit", "Submit for review", ("draft", "rejected"), "in_review", "editor"),
    Action("approve", "Approve", ("in_review",), "approved", "reviewer"),
    Action("reject", "Reject", ("in_review",), "rejected", "reviewer", needs_comment=True),
    Action("retire", "Retire", ("approved",), "retired", "reviewer"),
    Action("reopen", "Back to draft", ("rejected", "retired"), "draft", "editor"),
)}
MAX_COMMENT_CHARS = 2000


def available(phrase: Phrase, user: User) -> list[Action]:
    """The actions this user may take on this phrase now (what the page offers as buttons)."""
    return [a for a in ACTIONS.values() if phrase.status in a.sources and user.can(a.role)]


def transition(bank: PhraseBank, phrase_id: int, action_name: str, user: User, comment: str,
               expected_version: int | None) -> Phrase:
    """Apply one review action; refuses (BankError) a wrong state, role or missing comment, changing nothing."""
    action = ACTIONS.get(action_name)
    if action is None:
        raise BankError(f"unknown review action {action_name!r}; use one of {', '.join(ACTIONS)}")
    if not user.can(action.role):
        raise BankError(f"{action.label} needs the {action.role} role; {user.name} is a {user.role}")
    comment = comment.strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise BankError(f"comment: {len(comment)} characters, the limit is {MAX_COMMENT_CHARS}; shorten it")
    if action.needs_comment and not comment:
        raise BankError(f"comment: {action.label.lower()} needs a comment saying what to fix")
    phrase = bank.get(phrase_id)
    if phrase.status not in action.sources:
        raise BankError(f"phrase #{phrase_id} is {phrase.status}; {action.label.lower()} applies to "
                        f"{' or '.join(action.sources)} phrases. Reload the page.")
    why = f"{action.name}: {comment}" if comment else action.name
    return bank.update(phrase_id, who=user.name, why=why, expected_version=expected_version, status=action.target)


def edit_status(phrase: Phrase, changes: dict[str, object], user: User) -> str | None:
    """The status an edit moves the phrase to: a text or language change to a live phrase by someone who
    cannot approve goes back to review, so nothing reaches users unreviewed."""
    touches_reply = any(key in changes and changes[key] != getattr(phrase, key) for key in ("text", "language"))
    if phrase.status == "approved" and touches_reply and not user.can("reviewer"):
        return "in_review"
    return None
