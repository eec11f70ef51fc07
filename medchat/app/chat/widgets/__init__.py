from medchat.app.chat.widgets.chat import AssistantMessage, ChatView, UserMessage
from medchat.app.chat.widgets.input import ChatInput
from medchat.app.chat.widgets.sidebar import HistorySidebar

__all__ = ["AssistantMessage", "ChatInput", "ChatView", "HistorySidebar", "UserMessage"]
