from medchat.tui.widgets.chat import AssistantMessage, ChatView, UserMessage
from medchat.tui.widgets.input import ChatInput
from medchat.tui.widgets.sidebar import HistorySidebar

__all__ = ["AssistantMessage", "ChatInput", "ChatView", "HistorySidebar", "UserMessage"]
