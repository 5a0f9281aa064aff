output "instance_ids" {
  description = "Node id => instance id."
  value       = { for id, i in aws_instance.node : id => i.id }
}

output "volume_ids" {
  description = "Node id => data volume id."
  value       = { for id, v in aws_ebs_volume.data : id => v.id }
}

output "role_arn" {
  description = "The nodes' IAM role."
  value       = aws_iam_role.node.arn
}

output "configs" {
  description = "Node id => the node.toml it boots with."
  value       = local.config
}
