output "nodes" {
  description = "Every node: address, zone, groups, instance and volume."
  value       = module.kvraft.nodes
}

output "group_addresses" {
  description = "Group id => node id => address."
  value       = module.kvraft.group_addresses
}

output "controller_addresses" {
  description = "The controller's addresses."
  value       = module.kvraft.controller_addresses
}

output "shardctl" {
  description = "A ready-to-paste shardctl line."
  value       = module.kvraft.shardctl
}

output "join_commands" {
  description = "The shardctl lines that join the data groups (once)."
  value       = module.kvraft.join_commands
}

output "bucket" {
  description = "The backup bucket."
  value       = module.kvraft.bucket
}
