from medchat.tui.screens.dialogs import ConfirmScreen, ExportScreen, MessageMenuScreen, TextPromptScreen
from medchat.tui.screens.help import HelpScreen
from medchat.tui.screens.model_info import ModelInfoScreen
from medchat.tui.screens.settings import SettingsScreen

__all__ = [
    "ConfirmScreen",
    "ExportScreen",
    "HelpScreen",
    "MessageMenuScreen",
    "ModelInfoScreen",
    "SettingsScreen",
    "TextPromptScreen",
]
