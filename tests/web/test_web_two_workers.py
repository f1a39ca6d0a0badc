"""Two workers on one host: each lists every study and answers for the other's (routed by key); one dies."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.web.conftest import WebCluster, study_events, study_per_partition, wait_listed


def test_each_worker_lists_every_study_and_answers_for_the_others(two_worker_cluster: WebCluster) -> None:
    cluster = two_worker_cluster
    a = cluster.start_worker("a")
    a.wait_started()
    b = cluster.start_worker("b")
    b.wait_started()
    by_partition = study_per_partition(cluster.settings.topic_partitions)
    studies = set(by_partition.values())
    cluster.produce([e for uid in sorted(studies) for e in study_events(uid, series=1, per_series=2)])

    def split() -> tuple[set[str], set[str]] | None:
        """Which worker holds which study, once the assignment has settled on both owning some."""
        answers = [cluster.get(worker, "/api/studies?scope=local") for worker in (a, b)]
        if any(r.status_code != 200 for r in answers):
            return None
        on_a, on_b = ({r["study_uid"] for r in answer.json()["studies"]} & studies for answer in answers)
        return (on_a, on_b) if on_a and on_b and on_a | on_b == studies and not on_a & on_b else None

    on_a, on_b = wait_for(split, 90, interval=0.5, what="studies split between the two workers")
    for worker in (a, b):
        listing = wait_listed(cluster, worker, studies, instance_count=2)
        assert listing["complete"] and not listing["errors"]

    for asked, owner, owned in ((a, b, on_b), (b, a, on_a)):
        for uid in owned:
            detail = cluster.json(asked, f"/api/studies/{uid}")
            assert detail["study_uid"] == uid and detail["instance_count"] == 2
            assert detail["worker"] == f"http://localhost:{owner.web_port}"
            # The router hashed the UID to the partition the producer's partitioner put the study on.
            assert by_partition[detail["partition"]] == uid
        uid = min(owned)
        page = cluster.get(asked, f"/studies/{uid}", headers=cluster.auth.basic)
        assert page.status_code == 200 and f"Study {uid}" in page.text

    # B dies: A keeps answering (naming B while the assignment still does), then lists everything alone.
    b.kill()
    first = cluster.json(a, "/api/studies")
    assert first["complete"] or any(f"localhost:{b.web_port}" in e for e in first["errors"])
    wait_listed(cluster, a, studies, timeout=60)
