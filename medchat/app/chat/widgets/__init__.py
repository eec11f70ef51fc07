from medchat.app.chat.widgets.chat import ChatView
from medchat.app.chat.widgets.input import ChatInput
from medchat.app.chat.widgets.messages import AssistantMessage, UserMessage
from medchat.app.chat.widgets.sidebar import ConversationList, HistorySidebar
from medchat.app.chat.widgets.status import PinnedNotice, StatusBar

__all__ = ["AssistantMessage", "ChatInput", "ChatView", "ConversationList", "HistorySidebar", "PinnedNotice",
           "StatusBar", "UserMessage"]
