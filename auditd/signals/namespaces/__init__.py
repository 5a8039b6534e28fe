"""Namespace changes: setns, unshare, clone and clone3 with CLONE_NEW*: who moved, from which
namespace to which, and whose namespace it was."""
