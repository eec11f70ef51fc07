from medchat.app.chat.screens.dialogs import ConfirmScreen, ExportScreen, MessageMenuScreen, TextPromptScreen
from medchat.app.chat.screens.help import HelpScreen
from medchat.app.chat.screens.model_info import ModelInfoScreen
from medchat.app.chat.screens.runs import RunPickerScreen, known_adapters
from medchat.app.chat.screens.settings import SettingsScreen

__all__ = [
    "ConfirmScreen",
    "ExportScreen",
    "HelpScreen",
    "MessageMenuScreen",
    "ModelInfoScreen",
    "RunPickerScreen",
    "SettingsScreen",
    "TextPromptScreen",
    "known_adapters",
]
