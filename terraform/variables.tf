variable "name" {
  description = "The cluster's name: prefixes every resource, names its SSM parameters (/kvraft/<name>/...) and its backups (cluster_name)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 24 characters of a-z, 0-9 and -, starting with a letter and not ending with -."
  }
}

variable "controller_replicas" {
  description = "Replicas of the shard controller (group 0): odd, 3 to 7. Ignored when colocate_controller is true (the controller then runs on the first data group's nodes)."
  type        = number
  default     = 3

  validation {
    condition     = var.controller_replicas >= 3 && var.controller_replicas <= 7 && var.controller_replicas % 2 == 1
    error_message = "controller_replicas must be odd and from 3 to 7."
  }
}

variable "data_groups" {
  description = "The data groups: group id (1 to 20) => replicas (odd, 3 to 7). Node ids are <gid>*10 + 1..7; the controller's are 1..7."
  type = map(object({
    replicas = number
  }))
  default = { "1" = { replicas = 3 } }

  validation {
    condition     = length(var.data_groups) >= 1
    error_message = "data_groups needs at least one group."
  }
  validation {
    condition     = alltrue([for gid, g in var.data_groups : can(regex("^([1-9]|1[0-9]|20)$", gid))])
    error_message = "data group ids must be whole numbers from 1 to 20."
  }
  validation {
    condition     = alltrue([for g in values(var.data_groups) : g.replicas >= 3 && g.replicas <= 7 && g.replicas % 2 == 1])
    error_message = "every data group's replicas must be odd and from 3 to 7."
  }
}

variable "colocate_controller" {
  description = "Run the controller on the first data group's nodes instead of nodes of its own (a small cluster: one group, three instances)."
  type        = bool
  default     = false
}

variable "vpc_cidr" {
  description = "The VPC's CIDR (prefix /16 to /20). Each availability zone gets a /24 for nodes (fixed addresses) and one for the VPC endpoints."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20, false)
    error_message = "vpc_cidr must be an IPv4 CIDR with a prefix from /16 to /20, like 10.42.0.0/16."
  }
}

variable "availability_zones" {
  description = "Zones to spread each group's replicas over, round robin. Set them for production: empty reads the region's first three available zones on every plan, and a changed answer would move nodes (and their volumes)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == length(distinct(var.availability_zones))
    error_message = "availability_zones must not repeat a zone."
  }
  validation {
    condition     = length(var.availability_zones) <= 6
    error_message = "availability_zones takes at most 6 zones."
  }
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the client port (applications, operators). Members of the cluster always reach each other."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.client_cidrs : can(cidrnetmask(c))])
    error_message = "client_cidrs must be IPv4 CIDRs, like 10.0.0.0/8."
  }
  validation {
    condition     = !contains(var.client_cidrs, "0.0.0.0/0")
    error_message = "client_cidrs must not open the client port to the whole internet (0.0.0.0/0)."
  }
}

variable "port" {
  description = "The port every node serves clients and peers on (HTTPS)."
  type        = number
  default     = 7001

  validation {
    condition     = var.port >= 1024 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number from 1024 to 65535."
  }
}

variable "instance_type" {
  description = "EC2 instance type of every node (one that supports EBS optimization)."
  type        = string
  default     = "m6i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like m6i.large."
  }
}

variable "ami_id" {
  description = "AMI for the nodes (empty: the newest Debian 12 amd64 from Debian's account). It needs python3 with venv and cloud-init."
  type        = string
  default     = ""

  validation {
    condition     = var.ami_id == "" || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be empty or an AMI id like ami-0123456789abcdef0."
  }
}

variable "root_volume_size" {
  description = "Root volume size in GiB (the OS and the kvraft install; data is on its own volume)."
  type        = number
  default     = 16

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be from 8 to 1024 GiB."
  }
}

variable "data_volume" {
  description = "Each node's data volume (gp3, encrypted): size in GiB, IOPS and throughput in MiB/s."
  type = object({
    size       = number
    iops       = optional(number, 3000)
    throughput = optional(number, 125)
  })
  default = { size = 50 }

  validation {
    condition     = var.data_volume.size >= 1 && var.data_volume.size <= 16384 && var.data_volume.iops >= 3000 && var.data_volume.iops <= 16000 && var.data_volume.throughput >= 125 && var.data_volume.throughput <= 1000
    error_message = "data_volume: size 1 to 16384 GiB, iops 3000 to 16000, throughput 125 to 1000 MiB/s (gp3's limits)."
  }
}

variable "backup_bucket" {
  description = "An existing S3 bucket to back up to (empty: the module creates a hardened one)."
  type        = string
  default     = ""

  validation {
    condition     = var.backup_bucket == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.backup_bucket))
    error_message = "backup_bucket must be empty or a valid S3 bucket name."
  }
}

variable "backup_prefix" {
  description = "Key prefix of this cluster's objects in the bucket; the nodes' role reaches only <prefix>/*."
  type        = string
  default     = "kvraft"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", var.backup_prefix))
    error_message = "backup_prefix must be 1 to 63 characters of A-Z, a-z, 0-9, _, . and -, with no slash."
  }
}

variable "bucket_encryption" {
  description = "Server-side encryption of the bucket the module creates: aws:kms (with the cluster's own key) or AES256 (SSE-S3)."
  type        = string
  default     = "aws:kms"

  validation {
    condition     = contains(["aws:kms", "AES256"], var.bucket_encryption)
    error_message = "bucket_encryption must be aws:kms or AES256."
  }
}

variable "bucket_object_ownership" {
  description = "Object ownership of the created bucket. BucketOwnerEnforced (ACLs off) needs provider 3.66 or newer; on 3.39 use BucketOwnerPreferred."
  type        = string
  default     = "BucketOwnerEnforced"

  validation {
    condition     = contains(["BucketOwnerEnforced", "BucketOwnerPreferred"], var.bucket_object_ownership)
    error_message = "bucket_object_ownership must be BucketOwnerEnforced or BucketOwnerPreferred."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted backup object's old version is kept."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1 && var.noncurrent_version_days <= 3650
    error_message = "noncurrent_version_days must be from 1 to 3650."
  }
}

variable "force_destroy_bucket" {
  description = "Let terraform destroy delete a bucket that still holds backups (for test clusters only)."
  type        = bool
  default     = false
}

variable "cluster_secret" {
  description = "The cluster secret (at least 32 characters): stored as an SSM SecureString, read by the nodes at boot, never in user data."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.cluster_secret) >= 32 && can(regex("^[!-~]+$", var.cluster_secret))
    error_message = "cluster_secret must be at least 32 printable ASCII characters, no spaces."
  }
}

variable "tls_ca_cert" {
  description = "The cluster CA certificate (PEM; `kvraft certs init` writes ca.crt)."
  type        = string

  validation {
    condition     = can(regex("-----BEGIN CERTIFICATE-----", var.tls_ca_cert))
    error_message = "tls_ca_cert must be a PEM certificate."
  }
}

variable "tls_ca_key" {
  description = "The cluster CA's private key (PEM, ca.key): an SSM SecureString that nodes sign their own certificates with at boot."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("-----BEGIN (EC )?PRIVATE KEY-----", var.tls_ca_key))
    error_message = "tls_ca_key must be an unencrypted PEM private key."
  }
}

variable "kvraft_package" {
  description = "What the nodes pip install: a requirement (kvraft==1.2.3) or a wheel URL."
  type        = string
  default     = "kvraft"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.:/@=<>!~+-]*$", var.kvraft_package))
    error_message = "kvraft_package must be one pip requirement or URL, with no spaces or quotes."
  }
}

variable "enable_nat_gateway" {
  description = "A NAT gateway so that nodes (with no public address) reach PyPI at boot. Off when the AMI has kvraft baked in or a mirror is reachable."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
