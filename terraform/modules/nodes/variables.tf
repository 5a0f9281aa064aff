variable "name" {
  description = "The cluster's name."
  type        = string
}

variable "nodes" {
  description = "Node id => its slot: zone, subnet, fixed address, groups, peers and the controller's addresses."
  type = map(object({
    replica    = number
    groups     = list(number)
    az         = string
    subnet_id  = string
    ip         = string
    peers      = map(string)
    controller = list(string)
  }))
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "security_group" {
  description = "The nodes' security group."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
}

variable "ami_id" {
  description = "AMI (empty: newest Debian 12)."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume GiB."
  type        = number
}

variable "data_volume" {
  description = "Data volume size, iops and throughput."
  type = object({
    size       = number
    iops       = number
    throughput = number
  })
}

variable "kms_key_arn" {
  description = "The key that encrypts the volumes."
  type        = string
}

variable "port" {
  description = "Client and peer port."
  type        = number
}

variable "region" {
  description = "The region (for SSM and S3 at boot)."
  type        = string
}

variable "partition" {
  description = "The AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
}

variable "bucket" {
  description = "The backup bucket."
  type        = string
}

variable "backup_prefix" {
  description = "The key prefix the role may use."
  type        = string
}

variable "ssm_path" {
  description = "The cluster's SSM path (/kvraft/<name>)."
  type        = string
}

variable "ssm_parameter_arns" {
  description = "The parameters the role may read."
  type        = list(string)
}

variable "kvraft_package" {
  description = "The pip requirement to install."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
}
