"""Which content tags of older builds the local node drops at an image load."""

from __future__ import annotations

from localkube.cluster import stale_content_tags

RUNTIME = "docker.io/library/modelship-runtime"


def test_older_content_tags_of_the_repository_go_and_everything_else_stays() -> None:
    listed = [
        f"{RUNTIME}:dev",  # the moving tag, reloaded in place
        f"{RUNTIME}:0123456789ab",  # this build
        f"{RUNTIME}:aaaaaaaaaaaa",  # an older build
        f"{RUNTIME}:bbbbbbbbbbbb",  # an older build a container still runs
        f"{RUNTIME}:v0.4.0",  # a release tag
        f"{RUNTIME}:ABCDEF012345",  # not how content tags are spelled
        "docker.io/library/modelship-operator:cccccccccccc",  # another repository
        f"{RUNTIME}-extra:dddddddddddd",  # a repository whose name starts the same
        "registry.k8s.io/pause:3.10",
    ]
    stale = stale_content_tags(listed, f"{RUNTIME}:0123456789ab", {f"{RUNTIME}:bbbbbbbbbbbb"})
    assert stale == [f"{RUNTIME}:aaaaaaaaaaaa"]
