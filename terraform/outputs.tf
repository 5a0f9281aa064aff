output "nodes" {
  description = "Every node: id => its address, zone, groups and instance id."
  value = {
    for id, n in local.nodes : id => {
      address     = local.addresses[id]
      az          = n.az
      groups      = n.groups
      instance_id = module.nodes.instance_ids[id]
      volume_id   = module.nodes.volume_ids[id]
    }
  }
}

output "group_addresses" {
  description = "Group id => node id => address (0 is the controller)."
  value       = { for g, m in local.members : tostring(g) => m }
}

output "controller_addresses" {
  description = "The controller's addresses, for shardctl --controller and the client library."
  value       = local.controller
}

output "shardctl" {
  description = "A ready-to-paste shardctl line (add --secret-file or --token-file, and the TLS files in KVRAFT_TLS_CA/_CERT/_KEY)."
  value       = "shardctl --controller ${join(",", local.controller)} show"
}

output "join_commands" {
  description = "The shardctl lines that join each data group to the controller (once, after first boot)."
  value = [
    for g in [for n in sort([for g in keys(local.members) : format("%02d", tonumber(g)) if g != "0"]) : tostring(tonumber(n))] :
    "shardctl --controller ${join(",", local.controller)} join ${g} ${join(" ", [for id in sort(keys(local.members[g])) : "${id}=${local.members[g][id]}"])}"
  ]
}

output "bucket" {
  description = "The backup bucket."
  value       = module.backups.bucket
}

output "ssm_path" {
  description = "Where the cluster's SSM parameters are."
  value       = local.ssm_path
}

output "security_group_id" {
  description = "The nodes' security group."
  value       = module.network.node_security_group_id
}

output "instance_role_arn" {
  description = "The nodes' IAM role."
  value       = module.nodes.role_arn
}
