from podplumb.runtime import *  # noqa: F401,F403  (moved; imports are repointed when the tree is quiet)
from podplumb.runtime import Network, PluginFailed, Run, exec_plugin  # noqa: F401
