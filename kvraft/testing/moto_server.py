"""``python -m kvraft.testing.moto_server``: moto's server, with three fixes that Terraform's
AWS provider needs to plan against it as against AWS:

- the EC2 calls that ``monitoring = true`` makes, MonitorInstances and
  UnmonitorInstances, which moto answers with NotImplementedError; the state they set is
  the instance's real monitoring state, which DescribeInstances then reports;
- an instance with no public address has no ``association`` on its network interface
  (moto sends an empty one, which the provider reads as a public address, so every
  re-plan would replace every instance);
- a terminated instance gives its private address back to the subnet, as in EC2
  (moto keeps it, so ``terraform apply -replace`` of an instance with a fixed address
  could never create the new one).
"""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.models.instances import Instance
from moto.ec2.responses.monitoring import Monitoring


def _set_monitoring(self: Any, state: str) -> ActionResult:
    self.error_on_dryrun()
    ids = self._get_param("InstanceIds", [])
    out = []
    for iid in ids:
        inst = self.ec2_backend.get_instance(iid)  # InvalidInstanceID.NotFound if unknown
        inst.monitoring_state = state
        out.append({"InstanceId": iid, "Monitoring": {"State": state}})
    return ActionResult({"InstanceMonitorings": out})


def _monitor(self: Any) -> ActionResult:
    return _set_monitoring(self, "enabled")


def _unmonitor(self: Any) -> ActionResult:
    return _set_monitoring(self, "disabled")


_association = NetworkInterface.association


def _association_or_none(self: Any) -> Any:
    return _association.fget(self) if self.public_ip else None


_terminate = Instance.terminate


def _terminate_and_release(self: Any) -> Any:
    state = _terminate(self)
    for subnet in {nic.subnet for nic in self.nics.values() if nic.subnet is not None}:
        for ip, holder in list(subnet._subnet_ips.items()):
            if holder is self:
                subnet.del_subnet_ip(ip)
    return state


def main() -> None:
    setattr(Instance, "terminate", _terminate_and_release)  # noqa: B010
    setattr(NetworkInterface, "association", property(_association_or_none))  # noqa: B010
    setattr(Monitoring, "monitor_instances", _monitor)  # noqa: B010
    setattr(Monitoring, "unmonitor_instances", _unmonitor)  # noqa: B010
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
