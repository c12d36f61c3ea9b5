"""The Docker Engine API bodies and queries a guarded kernel may send, as models.

Field names and types follow the Engine API's definitions (``api/types/container``,
``mount``, ``network``, ``strslice``, and the routers' query parameters) for the API
versions the guard serves (1.24 and newer). A field listed here is *readable*: whether a
value is allowed is :mod:`.policy`'s decision. A field not listed is refused when set.
"""

from __future__ import annotations

from .canonical import (
    Bool,
    Int,
    ListOf,
    MapOf,
    Opaque,
    QBool,
    QInt,
    QJson,
    QStr,
    Query,
    Str,
    StrSlice,
    Struct,
)

__all__ = [
    "COMMIT_CONFIG",
    "CREATE",
    "EXEC_CREATE",
    "EXEC_START",
    "QUERIES",
]

_EMPTY = Struct({})  # map values Docker reads as empty structs (ExposedPorts, Volumes)

THROTTLE = Struct({"Path": Str(), "Rate": Int()})
WEIGHT = Struct({"Path": Str(), "Weight": Int()})
DEVICE = Struct({"PathOnHost": Str(), "PathInContainer": Str(), "CgroupPermissions": Str()})
DEVICE_REQUEST = Struct(
    {
        "Driver": Str(),
        "Count": Int(),
        "DeviceIDs": ListOf(Str()),
        "Capabilities": ListOf(ListOf(Str())),
        "Options": MapOf(Str()),
    }
)
ULIMIT = Struct({"Name": Str(), "Soft": Int(), "Hard": Int()})
MOUNT = Struct(
    {
        "Type": Str(),
        "Source": Str(),
        "Target": Str(),
        "ReadOnly": Bool(),
        "Consistency": Str(),
        "BindOptions": Struct(
            {
                "Propagation": Str(),
                "NonRecursive": Bool(),
                "CreateMountpoint": Bool(),
                "ReadOnlyNonRecursive": Bool(),
                "ReadOnlyForceRecursive": Bool(),
            }
        ),
        "VolumeOptions": Struct(
            {
                "NoCopy": Bool(),
                "Labels": MapOf(Str()),
                "Subpath": Str(),
                "DriverConfig": Struct({"Name": Str(), "Options": MapOf(Str())}),
            }
        ),
        "TmpfsOptions": Struct(
            {"SizeBytes": Int(), "Mode": Int(), "Options": ListOf(ListOf(Str()))}
        ),
    }
)
PORT_BINDING = Struct({"HostIp": Str(), "HostPort": Str()})

HOST_CONFIG = Struct(
    {
        # resources
        "CpuShares": Int(),
        "Memory": Int(),
        "CgroupParent": Str(),
        "BlkioWeight": Int(),
        "BlkioWeightDevice": ListOf(WEIGHT),
        "BlkioDeviceReadBps": ListOf(THROTTLE),
        "BlkioDeviceWriteBps": ListOf(THROTTLE),
        "BlkioDeviceReadIOps": ListOf(THROTTLE),
        "BlkioDeviceWriteIOps": ListOf(THROTTLE),
        "CpuPeriod": Int(),
        "CpuQuota": Int(),
        "CpuRealtimePeriod": Int(),
        "CpuRealtimeRuntime": Int(),
        "CpusetCpus": Str(),
        "CpusetMems": Str(),
        "Devices": ListOf(DEVICE),
        "DeviceCgroupRules": ListOf(Str()),
        "DeviceRequests": ListOf(DEVICE_REQUEST),
        "KernelMemory": Int(),
        "KernelMemoryTCP": Int(),
        "MemoryReservation": Int(),
        "MemorySwap": Int(),
        "MemorySwappiness": Int(),
        "NanoCpus": Int(),
        "OomKillDisable": Bool(),
        "Init": Bool(),
        "PidsLimit": Int(),
        "Ulimits": ListOf(ULIMIT),
        "CpuCount": Int(),
        "CpuPercent": Int(),
        "IOMaximumIOps": Int(),
        "IOMaximumBandwidth": Int(),
        # the rest of HostConfig
        "Binds": ListOf(Str()),
        "ContainerIDFile": Str(),
        "LogConfig": Struct({"Type": Str(), "Config": MapOf(Str())}),
        "NetworkMode": Str(),
        "PortBindings": MapOf(ListOf(PORT_BINDING)),
        "RestartPolicy": Struct({"Name": Str(), "MaximumRetryCount": Int()}),
        "AutoRemove": Bool(),
        "VolumeDriver": Str(),
        "VolumesFrom": ListOf(Str()),
        "Mounts": ListOf(MOUNT),
        "ConsoleSize": ListOf(Int()),
        "Annotations": MapOf(Str()),
        "CapAdd": ListOf(Str()),
        "CapDrop": ListOf(Str()),
        "Capabilities": ListOf(Str()),
        "CgroupnsMode": Str(),
        "Dns": ListOf(Str()),
        "DnsOptions": ListOf(Str()),
        "DnsSearch": ListOf(Str()),
        "ExtraHosts": ListOf(Str()),
        "GroupAdd": ListOf(Str()),
        "IpcMode": Str(),
        "Cgroup": Str(),
        "Links": ListOf(Str()),
        "OomScoreAdj": Int(),
        "PidMode": Str(),
        "Privileged": Bool(),
        "PublishAllPorts": Bool(),
        "ReadonlyRootfs": Bool(),
        "SecurityOpt": ListOf(Str()),
        "StorageOpt": MapOf(Str()),
        "Tmpfs": MapOf(Str()),
        "UTSMode": Str(),
        "UsernsMode": Str(),
        "ShmSize": Int(),
        "Sysctls": MapOf(Str()),
        "Runtime": Str(),
        "Isolation": Str(),
        "MaskedPaths": ListOf(Str()),
        "ReadonlyPaths": ListOf(Str()),
    },
    name="HostConfig",
)

HEALTHCHECK = Struct(
    {
        "Test": ListOf(Str()),
        "Interval": Int(),
        "Timeout": Int(),
        "StartPeriod": Int(),
        "StartInterval": Int(),
        "Retries": Int(),
    }
)

# container.Config: the top level of a create body, and the body of a commit.
CONFIG_FIELDS = {
    "Hostname": Str(),
    "Domainname": Str(),
    "User": Str(),
    "AttachStdin": Bool(),
    "AttachStdout": Bool(),
    "AttachStderr": Bool(),
    "ExposedPorts": MapOf(_EMPTY),
    "Tty": Bool(),
    "OpenStdin": Bool(),
    "StdinOnce": Bool(),
    "Env": ListOf(Str()),
    "Cmd": StrSlice(),
    "Healthcheck": HEALTHCHECK,
    "ArgsEscaped": Bool(),
    "Image": Str(),
    "Volumes": MapOf(_EMPTY),
    "WorkingDir": Str(),
    "Entrypoint": StrSlice(),
    "NetworkDisabled": Bool(),
    "MacAddress": Str(),
    "OnBuild": ListOf(Str()),
    "Labels": MapOf(Str()),
    "StopSignal": Str(),
    "StopTimeout": Int(),
    "Shell": ListOf(Str()),
}
COMMIT_CONFIG = Struct(CONFIG_FIELDS, name="Config")

ENDPOINT_SETTINGS = Struct(
    {
        "IPAMConfig": Opaque(),
        "Links": ListOf(Str()),
        "Aliases": ListOf(Str()),
        "MacAddress": Str(),
        "NetworkID": Str(),
        "EndpointID": Str(),
        "Gateway": Str(),
        "IPAddress": Str(),
        "IPPrefixLen": Int(),
        "IPv6Gateway": Str(),
        "GlobalIPv6Address": Str(),
        "GlobalIPv6PrefixLen": Int(),
        "DriverOpts": MapOf(Str()),
        "DNSNames": ListOf(Str()),
    }
)

# container.CreateRequest: Config's fields promoted, plus HostConfig and NetworkingConfig.
CREATE = Struct(
    {
        **CONFIG_FIELDS,
        "HostConfig": HOST_CONFIG,
        "NetworkingConfig": Struct({"EndpointsConfig": MapOf(ENDPOINT_SETTINGS)}),
    },
    name="create",
)

EXEC_CREATE = Struct(
    {
        "Container": Str(),  # docker-py repeats the path's container here; not forwarded
        "User": Str(),
        "Privileged": Bool(),
        "Tty": Bool(),
        "ConsoleSize": ListOf(Int()),
        "AttachStdin": Bool(),
        "AttachStderr": Bool(),
        "AttachStdout": Bool(),
        "Detach": Bool(),
        "DetachKeys": Str(),
        "Env": ListOf(Str()),
        "WorkingDir": Str(),
        "Cmd": StrSlice(),
    },
    name="exec",
)
EXEC_START = Struct({"Detach": Bool(), "Tty": Bool(), "ConsoleSize": ListOf(Int())}, name="exec")

# ------------------------------------------------------------------------ queries
_FILTERS = QJson(MapOf(Opaque()))
_SIGNAL = QStr(r"[A-Za-z0-9+]{1,16}")
_NAME = QStr(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
# An image reference: repository[:tag][@digest] (what a tag, push or build names).
_REF = QStr(r"[a-zA-Z0-9][a-zA-Z0-9_.:/@+-]{0,511}")

QUERIES: dict[str, Query] = {
    "none": Query(),
    "containers/create": Query({"name": _NAME, "platform": QStr(r"[a-z0-9/_.-]{0,64}")}),
    "containers/json": Query(
        {
            "all": QBool(),
            "limit": QInt(),
            "size": QBool(),
            "filters": _FILTERS,
            "trunc_cmd": QBool(),
            "since": QStr(r"[a-zA-Z0-9_.-]{0,128}"),
            "before": QStr(r"[a-zA-Z0-9_.-]{0,128}"),
        }
    ),
    "container/json": Query({"size": QBool()}),
    "container/start": Query({"detachKeys": QStr()}),
    "container/wait": Query({"condition": QStr(r"not-running|next-exit|removed")}),
    "container/logs": Query(
        {
            "follow": QBool(),
            "stdout": QBool(),
            "stderr": QBool(),
            "since": QStr(r"[0-9.]{0,32}"),
            "until": QStr(r"[0-9.]{0,32}"),
            "timestamps": QBool(),
            "tail": QStr(r"all|\d{1,12}"),
            "details": QBool(),
        }
    ),
    "container/stop": Query({"t": QInt(), "signal": _SIGNAL}),
    "container/kill": Query({"signal": _SIGNAL}),
    "container/restart": Query({"t": QInt(), "signal": _SIGNAL}),
    "container/rename": Query({"name": _NAME}),
    "container/archive:GET": Query({"path": QStr()}),
    "container/archive:PUT": Query(
        {"path": QStr(), "noOverwriteDirNonDir": QBool(), "copyUIDGID": QBool()}
    ),
    "container/changes": Query(),
    "container/attach": Query(
        {
            "detachKeys": QStr(),
            "logs": QBool(),
            "stream": QBool(),
            "stdin": QBool(),
            "stdout": QBool(),
            "stderr": QBool(),
        }
    ),
    "container/resize": Query({"h": QInt(0), "w": QInt(0)}),
    "container/top": Query({"ps_args": QStr(r"[a-zA-Z0-9 ,=-]{0,64}")}),
    "container/stats": Query({"stream": QBool(), "one-shot": QBool()}),
    "container/delete": Query({"v": QBool(), "force": QBool(), "link": QBool()}),
    "exec/resize": Query({"h": QInt(0), "w": QInt(0)}),
    "build": Query(
        {
            "dockerfile": QStr(),
            "t": _REF,
            "extrahosts": QStr(),
            "remote": QStr(),
            "q": QBool(),
            "nocache": QBool(),
            "cachefrom": QJson(ListOf(Str())),
            "pull": QBool(),
            "rm": QBool(),
            "forcerm": QBool(),
            "memory": QInt(0),
            "memswap": QInt(-1),
            "cpushares": QInt(0),
            "cpusetcpus": QStr(r"[0-9,-]{0,64}"),
            "cpusetmems": QStr(r"[0-9,-]{0,64}"),
            "cpuperiod": QInt(0),
            "cpuquota": QInt(0),
            "buildargs": QJson(MapOf(Str())),
            "shmsize": QInt(0),
            "squash": QBool(),
            "labels": QJson(MapOf(Str())),
            "networkmode": QStr(),
            "platform": QStr(),
            "target": QStr(r"[a-zA-Z0-9_.-]{0,128}"),
            "outputs": QStr(),
            "version": QStr(),
            "ulimits": QStr(),
            "cgroupparent": QStr(),
            "isolation": QStr(),
            "session": QStr(),
            "buildid": QStr(),
        },
        multi=frozenset({"t"}),
    ),
    "commit": Query(
        {
            "container": QStr(),
            "repo": _REF,
            "tag": QStr(r"[\w][\w.-]{0,127}"),
            "comment": QStr(),
            "author": QStr(),
            "pause": QBool(),
            "changes": QStr(),
        },
        multi=frozenset({"changes"}),
    ),
    "images/json": Query(
        {
            "all": QBool(),
            "only_ids": QBool(),
            "filters": _FILTERS,
            "filter": QStr(),
            "shared-size": QBool(),
            "digests": QBool(),
            "manifests": QBool(),
        }
    ),
    "image/json": Query(),
    "image/tag": Query({"repo": _REF, "tag": QStr(r"[\w][\w.-]{0,127}"), "force": QBool()}),
    "image/push": Query({"tag": QStr(r"[\w][\w.-]{0,127}"), "platform": QStr()}),
    "image/delete": Query({"force": QBool(), "noprune": QBool()}),
    "ping": Query(),
    "version": Query(),
    "info": Query(),
    "exec/start": Query(),
    "exec/json": Query(),
}
