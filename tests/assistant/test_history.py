"""What part of a stored conversation is replayed to the model."""

from __future__ import annotations

from app.assistant.conversations import HISTORY_LIMIT, history_for_model
from app.db.models import Message, MessageRole, MessageStatus


def _msg(role: MessageRole, content: str = "", status: MessageStatus = MessageStatus.COMPLETE,
         **fields: object) -> Message:
    return Message(role=role, content=content, status=status, **fields)


def test_failed_turns_and_tool_plumbing_are_filtered() -> None:
    call = [{"id": "c1", "type": "function",
             "function": {"name": "get_message", "arguments": "{}"}}]
    stored = [
        _msg(MessageRole.USER, "first"),
        _msg(MessageRole.ASSISTANT, "The model failed", MessageStatus.ERROR),
        _msg(MessageRole.USER, "read my mail"),
        _msg(MessageRole.ASSISTANT, "", tool_calls=call),
        _msg(MessageRole.TOOL, '{"data": "email text"}', tool_call_id="c1"),
        _msg(MessageRole.ASSISTANT, "You have one email."),
    ]
    with_tools = history_for_model(stored, include_tools=True)
    assert [m["role"] for m in with_tools] == ["user", "user", "assistant", "tool", "assistant"]
    assert with_tools[2] == {"role": "assistant", "content": None, "tool_calls": call}
    assert with_tools[3]["tool_call_id"] == "c1"
    without = history_for_model(stored, include_tools=False)
    assert [m["content"] for m in without] == ["first", "read my mail", "You have one email."]


def test_history_is_bounded_and_starts_with_a_user_message() -> None:
    stored = []
    for n in range(HISTORY_LIMIT):
        stored += [_msg(MessageRole.USER, f"q{n}"), _msg(MessageRole.ASSISTANT, f"a{n}")]
    history = history_for_model(stored, include_tools=False)
    assert len(history) <= HISTORY_LIMIT
    assert history[0]["role"] == "user"
    assert history[-1]["content"] == f"a{HISTORY_LIMIT - 1}"
