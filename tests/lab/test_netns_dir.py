"""/run/netns on a fresh machine: not a mount point until the first `ip netns add` by anyone.

Each test runs in a private mount namespace of its own (unshare -m), where /run/netns is made a
plain directory again first, so the host's /run/netns is never touched and nothing the test
binds there outlives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

# Inside the private mount namespace: /run/netns made a plain directory (whatever the host has).
PLAIN_NETNS = """
set -eu
mkdir -p /run/netns
while grep -q " /run/netns " /proc/self/mountinfo; do umount -l /run/netns; done
"""


def _in_private_mount_ns(script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`script` in a private mount namespace with /run/netns a plain directory. The directory itself
    is the host's (a file made there shows on the host too), so every name is unique to the test
    and whatever it leaves there is removed at the end."""
    lab = "nd" + os.urandom(4).hex()
    env = {**os.environ, "LABNET_STATE_DIR": str(tmp / "state"), "LABNET_RUN_DIR": str(tmp / "run"),
           "PYTHON": sys.executable, "LAB": lab}
    cleanup = f"trap 'rm -f /run/netns/lnet-{lab}.* /run/netns/{lab}-*' EXIT\n"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", cleanup + PLAIN_NETNS + script],
                          capture_output=True, text=True, timeout=240, env=env)


# A lab's first namespace made by the netns runtime itself (prepare: /run/netns, then the fabric
# netns bound there), and torn down from its journal: the part of `up`/`down` that touches
# /run/netns. (Machines also bind mount-namespace files, which a nested private mount namespace
# refuses now and then: that is not what these tests are about.)
BUILD = """
from pathlib import Path
from labnet.lab.journal import Journal
from labnet.runtime.netns import NetnsRuntime
import os, sys
Path(os.environ["LABNET_STATE_DIR"], "labs", os.environ["LAB"]).mkdir(parents=True)
j = Journal(path=Path(os.environ["LABNET_STATE_DIR"], "labs", os.environ["LAB"], "journal.json"), lab=os.environ["LAB"])
rt = NetnsRuntime(os.environ["LAB"], j)
rt.prepare()
j.save()
"""
TEARDOWN = """
import os, sys
from pathlib import Path
from labnet.lab.journal import Journal
from labnet.runtime.netns import NetnsRuntime
j = Journal.load(Path(os.environ["LABNET_STATE_DIR"], "labs", os.environ["LAB"], "journal.json"))
problems = NetnsRuntime(os.environ["LAB"], j).teardown()
print("problems:", problems)
sys.exit(1 if problems else 0)
"""


def test_a_lab_stays_removable_after_someone_runs_ip_netns_add(tmp_path: Path) -> None:
    (tmp_path / "build.py").write_text(BUILD)
    (tmp_path / "teardown.py").write_text(TEARDOWN)
    script = textwrap.dedent(f"""
        grep ' /run/netns ' /proc/self/mountinfo && {{ echo "/run/netns is still a mount point"; exit 90; }}
        "$PYTHON" {tmp_path / "build.py"}
        echo "made: $(ls /run/netns | grep -c "^lnet-$LAB")"
        ip netns add $LAB-other            # anyone's: iproute2 binds /run/netns onto itself if it is not yet
        "$PYTHON" {tmp_path / "teardown.py"}
        echo "left: $(ls /run/netns | grep "^lnet-$LAB" | tr '\\n' ' ')."
        echo "mounts: $(grep -c ' /run/netns/lnet-$LAB' /proc/self/mountinfo || true)"
        ip netns del $LAB-other
    """)
    proc = _in_private_mount_ns(script, tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "made: 1" in proc.stdout and "problems: []" in proc.stdout, proc.stdout
    assert "left: ." in proc.stdout and "mounts: 0" in proc.stdout, (
        f"after teardown, expected none of the lab's namespace files and mounts; got:\n{proc.stdout}")


def test_the_runtime_prepares_run_netns_as_iproute2_does(tmp_path: Path) -> None:
    (tmp_path / "build.py").write_text(BUILD)
    (tmp_path / "teardown.py").write_text(TEARDOWN)
    script = textwrap.dedent(f"""
        "$PYTHON" {tmp_path / "build.py"}
        grep ' /run/netns /run/netns ' /proc/self/mountinfo
        "$PYTHON" {tmp_path / "teardown.py"} >/dev/null
    """)
    proc = _in_private_mount_ns(script, tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    line = proc.stdout.strip().splitlines()[0]
    assert "shared:" in line, f"/run/netns should be a shared bind mount of itself, mountinfo says: {line}"


def test_a_namespace_hidden_by_a_later_bind_of_run_netns_is_still_removed(tmp_path: Path) -> None:
    """A lab made before the fix (its namespace bound under a plain /run/netns) whose mount a later
    `ip netns add` hid: removal moves the cover aside, unmounts, and puts the cover back."""
    script = textwrap.dedent("""
        touch /run/netns/lnet-$LAB.a
        unshare --net=/run/netns/lnet-$LAB.a true
        ip netns add $LAB-other            # covers lnet-$LAB.a's mount
        "$PYTHON" -c "from pathlib import Path; from labnet.runtime.netns import _umount; _umount(Path('/run/netns/lnet-$LAB.a')); Path('/run/netns/lnet-$LAB.a').unlink()"
        echo "legacy mounts: $(grep -c ' /run/netns/lnet-$LAB.a ' /proc/self/mountinfo || true)"
        echo "other: $(ip netns list | grep -c $LAB-other)"
        ip netns del $LAB-other
    """)
    proc = _in_private_mount_ns(script, tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "legacy mounts: 0" in proc.stdout, proc.stdout
    assert "other: 1" in proc.stdout, f"the covering namespace must survive: {proc.stdout}"
