"""A reusable contract test suite for provider plugins (pytest).

A provider author subclasses :class:`ProviderContract` in a test module and supplies two
fixtures: ``provider`` (an instance of their Provider, configured to talk to a fake or
simulated API) and ``cloud`` (a :class:`CloudDouble` adapter over that fake, which lets the
suite move time, inject faults and read the fake's ledger). Every built-in provider runs this
same suite against its simulator; see ``docs/ADDING-PROVIDERS.md``.

The scenarios are what maider's lifecycle relies on: create → running → list by tag → delete →
gone, idempotent deletes, typed errors, retries that never duplicate a VM, and no secret in any
request or error message. Optional capabilities are tested when present: the watchdog's
credential (``self_destruct``: its calls, made with plain urllib, delete the VM; it expires; a
revoked one is refused), skipped for a provider that returns None.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any, ClassVar, Protocol

import pytest

from maider.provider import (
    AuthError,
    CapacityError,
    Catalog,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    Provider,
    ProviderError,
    SelfDestruct,
    VMInstance,
)

#: A syntactically valid public key (not anyone's: random bytes).
TEST_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl maider-contract-test"
)
USER_DATA = "#cloud-config\nruncmd:\n  - [echo, maider-contract-test]\n"


def run_self_destruct(destruct: SelfDestruct, timeout: float = 10.0) -> list[int]:
    """Make ``destruct.calls`` as the VM's watchdog does (plain urllib, no SDK, no proxy).

    Returns the HTTP status of each call made; it stops at the first one outside its
    ``ok_statuses``.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    statuses: list[int] = []
    for call in destruct.calls:
        data = json.dumps(call.json_body).encode() if call.json_body is not None else None
        headers = dict(call.headers)
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(call.url, data=data, headers=headers, method=call.method)
        try:
            with opener.open(request, timeout=timeout) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            exc.close()
        statuses.append(status)
        if status not in call.ok_statuses:
            break
    return statuses


class CloudDouble(Protocol):
    """What the contract suite needs from the fake API behind a provider."""

    #: Every credential the provider was configured with (scanned for in requests and errors).
    secrets: list[str]

    def advance(self, seconds: float) -> None:
        """Move the fake's clock: instances progress through their states."""

    def running_ids(self) -> set[str]:
        """Ids (as the provider reports them) of every instance the fake still bills."""

    def fail(self, operation: str, kind: str, *, on_call: int = 1, times: int = 1) -> None:
        """Make the next matching call(s) fail.

        operation: "create", "get", "list", "delete", "ssh_key", "firewall", "catalog".
        kind: "rate_limit" (429 + Retry-After), "server_error" (5xx), "drop" (connection closed),
        "lost_response" (the server acts, the answer is lost), "no_capacity" (the vendor's own
        sold-out error).
        """

    def vanish(self, instance_id: str) -> None:
        """Delete an instance behind the provider's back."""

    def request_texts(self) -> list[str]:
        """Every request the fake received, as text (method, URL, headers minus auth, body)."""

    def count(self, operation: str) -> int:
        """How many requests of that operation the fake received."""


class ProviderContract:
    """Subclass and provide the ``provider`` and ``cloud`` fixtures (and the two attributes)."""

    #: A region and GPU type the fake sells (and has capacity for).
    region: ClassVar[str]
    type_id: ClassVar[str]
    #: Simulated seconds to advance between polls while waiting for an instance.
    poll_seconds: ClassVar[float] = 30.0

    # -- helpers -------------------------------------------------------------------------

    def spec(self, provider: Provider, session: str | None = None, **overrides: Any) -> InstanceSpec:
        session = session or uuid.uuid4().hex[:10]
        fields: dict[str, Any] = {
            "name": f"maider-{session}",
            "region": self.region,
            "type_id": self.type_id,
            "user_data": USER_DATA,
            "tags": ("maider", f"maider-session-{session}"),
            "session_tag": f"maider-session-{session}",
            "ssh_public_key": TEST_PUBLIC_KEY,
        }
        fields.update(overrides)
        return InstanceSpec(**fields)

    def wait_running(
        self, provider: Provider, cloud: CloudDouble, instance_id: str, polls: int = 40
    ) -> VMInstance:
        for _ in range(polls):
            vm = provider.get_instance(instance_id)
            if vm.status is InstanceStatus.RUNNING and vm.public_ipv4:
                return vm
            cloud.advance(self.poll_seconds)
        raise AssertionError(f"instance {instance_id} never reached running")

    def delete_and_confirm(
        self, provider: Provider, cloud: CloudDouble, instance_id: str, polls: int = 40
    ) -> None:
        provider.delete_instance(instance_id)
        for _ in range(polls):
            if provider.get_instance_status(instance_id) is InstanceStatus.DELETED:
                return
            cloud.advance(self.poll_seconds)
        raise AssertionError(f"instance {instance_id} still exists after delete")

    # -- the contract --------------------------------------------------------------------

    def test_credentials_check_passes(self, provider: Provider, cloud: CloudDouble) -> None:
        check = provider.check_credentials()
        assert check.ok, check.reason

    def test_catalog_lists_the_type(self, provider: Provider, cloud: CloudDouble) -> None:
        live = provider.fetch_catalog()
        if live is None:
            pytest.skip("provider has no live catalog")
        assert isinstance(live, Catalog) and live.source == "live"
        assert self.type_id in live.types
        assert self.region in live.types[self.type_id].regions
        assert live.types[self.type_id].hourly_price.amount > 0

    def test_full_lifecycle(self, provider: Provider, cloud: CloudDouble) -> None:
        spec = self.spec(provider)
        vm = provider.create_instance(spec)
        assert vm.id and spec.session_tag in vm.tags
        running = self.wait_running(provider, cloud, vm.id)
        assert running.public_ipv4 and running.region == self.region and running.type_id == self.type_id
        assert vm.id in cloud.running_ids()
        listed = provider.list_instances(spec.session_tag)
        assert [i.id for i in listed] == [vm.id]
        assert vm.id in {i.id for i in provider.list_instances("maider")}
        self.delete_and_confirm(provider, cloud, vm.id)
        assert vm.id not in cloud.running_ids()
        with pytest.raises(NotFound):
            provider.get_instance(vm.id)
        assert provider.list_instances(spec.session_tag) == []

    def test_delete_is_idempotent(self, provider: Provider, cloud: CloudDouble) -> None:
        vm = provider.create_instance(self.spec(provider))
        self.delete_and_confirm(provider, cloud, vm.id)
        provider.delete_instance(vm.id)  # already gone: not an error

    def test_vanished_instance_reads_as_deleted(self, provider: Provider, cloud: CloudDouble) -> None:
        vm = provider.create_instance(self.spec(provider))
        cloud.vanish(vm.id)
        assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED

    def test_ssh_key_is_reused(self, provider: Provider, cloud: CloudDouble) -> None:
        first = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider-test")
        before = cloud.count("ssh_key")
        second = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider-test")
        assert first == second
        assert cloud.count("ssh_key") - before <= 2  # a lookup (maybe paged), never a second upload

    def test_firewall_is_reused(self, provider: Provider, cloud: CloudDouble) -> None:
        first = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
        second = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
        assert first == second

    @pytest.mark.parametrize("kind", ["rate_limit", "server_error", "drop"])
    def test_transient_failures_are_retried(self, provider: Provider, cloud: CloudDouble, kind: str) -> None:
        cloud.fail("list", kind)
        assert provider.list_instances("maider-nothing-here") == []

    @pytest.mark.parametrize("kind", ["lost_response", "server_error", "drop"])
    def test_failed_create_never_duplicates(self, provider: Provider, cloud: CloudDouble, kind: str) -> None:
        spec = self.spec(provider)
        cloud.fail("create", kind)
        try:
            vm = provider.create_instance(spec)
        except ProviderError:
            vm = None
        tagged = provider.list_instances(spec.session_tag)
        assert len(tagged) <= 1, f"{len(tagged)} instances created for one session"
        if vm is not None:
            assert [t.id for t in tagged] == [vm.id]
        for inst in tagged:
            self.delete_and_confirm(provider, cloud, inst.id)

    def test_capacity_error_is_typed(self, provider: Provider, cloud: CloudDouble) -> None:
        cloud.fail("create", "no_capacity")
        spec = self.spec(provider)
        with pytest.raises(CapacityError):
            provider.create_instance(spec)
        assert provider.list_instances(spec.session_tag) == []

    def test_secrets_never_leave_in_requests_or_errors(self, provider: Provider, cloud: CloudDouble) -> None:
        vm = provider.create_instance(self.spec(provider))
        cloud.fail("get", "no_capacity", times=1)
        try:
            provider.get_instance(vm.id)
        except ProviderError as exc:
            for secret in cloud.secrets:
                assert secret not in str(exc)
        provider.delete_instance(vm.id)
        text = "\n".join(cloud.request_texts())
        for secret in cloud.secrets:
            assert secret not in text

    def test_bad_credentials_are_an_auth_error(self, bad_provider: Provider, cloud: CloudDouble) -> None:
        """Needs a third fixture, ``bad_provider``: the same provider with a wrong token."""
        assert not bad_provider.check_credentials().ok
        with pytest.raises(AuthError) as info:
            bad_provider.list_instances("maider")
        for secret in cloud.secrets:
            assert secret not in str(info.value)

    # -- the watchdog's credential (optional: skipped when self_destruct returns None) -------

    #: Label of the credentials the self-destruct scenarios mint.
    watchdog_label: ClassVar[str] = "maider-contract-watchdog"

    def _self_destruct_or_skip(self, provider: Provider, vm: VMInstance, valid_for_s: float) -> SelfDestruct:
        destruct = provider.self_destruct(vm, valid_for_s=valid_for_s, label=self.watchdog_label)
        # `up --dry-run` promises what `up` then does.
        assert (provider.self_destruct_plan() is None) == (destruct is None), provider.self_destruct_plan()
        if destruct is None:
            provider.delete_instance(vm.id)
            pytest.skip(f"{provider.id} has no self-destruct credential here (the watchdog powers off)")
        assert destruct is not None  # pytest.skip raises; said for type checkers without pytest
        return destruct

    def test_self_destruct_deletes_the_vm(self, provider: Provider, cloud: CloudDouble) -> None:
        vm = self.wait_running(provider, cloud, provider.create_instance(self.spec(provider)).id)
        destruct = self._self_destruct_or_skip(provider, vm, valid_for_s=3600)
        assert destruct.calls and destruct.secrets and destruct.credential
        # A credential of its own, never the user's main one, and never shown by repr().
        for secret in cloud.secrets:
            assert secret not in json.dumps([c.to_dict() for c in destruct.calls])
            assert secret not in destruct.secrets
        for secret in destruct.secrets:
            assert secret not in repr(destruct)
        statuses = run_self_destruct(destruct)
        assert len(statuses) == len(destruct.calls), statuses
        assert all(s in c.ok_statuses for s, c in zip(statuses, destruct.calls, strict=True)), statuses
        for _ in range(40):
            if provider.get_instance_status(vm.id) is InstanceStatus.DELETED:
                break
            cloud.advance(self.poll_seconds)
        assert vm.id not in cloud.running_ids()
        provider.delete_instance(vm.id)  # what `down` does afterwards: still fine
        if destruct.revoke_handle is not None:
            provider.revoke_self_destruct(destruct.revoke_handle)
            provider.revoke_self_destruct(destruct.revoke_handle)  # idempotent

    def test_self_destruct_credential_expires(self, provider: Provider, cloud: CloudDouble) -> None:
        vm = self.wait_running(provider, cloud, provider.create_instance(self.spec(provider)).id)
        destruct = self._self_destruct_or_skip(provider, vm, valid_for_s=600)
        if destruct.expires_at is None:
            provider.delete_instance(vm.id)
            pytest.skip("this credential has no expiry the provider controls")
        cloud.advance(601)
        statuses = run_self_destruct(destruct)
        assert statuses and statuses[-1] in (401, 403), statuses
        assert vm.id in cloud.running_ids()
        self.delete_and_confirm(provider, cloud, vm.id)
        if destruct.revoke_handle is not None:
            provider.revoke_self_destruct(destruct.revoke_handle)

    def test_revoked_self_destruct_credential_is_refused(
        self, provider: Provider, cloud: CloudDouble
    ) -> None:
        vm = self.wait_running(provider, cloud, provider.create_instance(self.spec(provider)).id)
        destruct = self._self_destruct_or_skip(provider, vm, valid_for_s=3600)
        handle = destruct.revoke_handle
        if handle is None:
            provider.delete_instance(vm.id)
            pytest.skip("nothing to revoke: the credential is the user's own")
        assert handle is not None  # pytest.skip raises; said for type checkers without pytest
        provider.revoke_self_destruct(handle)
        statuses = run_self_destruct(destruct)
        assert statuses and statuses[-1] in (401, 403), statuses
        assert vm.id in cloud.running_ids()
        self.delete_and_confirm(provider, cloud, vm.id)
        provider.revoke_self_destruct(handle)  # gone already: not an error
