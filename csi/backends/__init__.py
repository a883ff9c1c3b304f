"""One backend per volume kind; each turns a volume's path into storage on this node."""

from csi.backends.bind import BindBackend
from csi.backends.gluster import GlusterBackend
from csi.backends.loop import LoopBackend

BACKENDS = {"bind": BindBackend(), "loop": LoopBackend(), "gluster": GlusterBackend()}

