// A C# task that creates a child job: it writes `::enqueue NAME PAYLOAD_JSON [OPTIONS_JSON]` on
// stdout (flushed), then reads the daemon's answer, one line, from the reply pipe whose file
// descriptor is JOB_REPLY_FD: "accepted <child id>", "existing <child id>" (an earlier attempt of
// this job created it: a retried task makes no second child) or "error - <why>".
using System;
using System.IO;

public static class SpawnChild
{
    public static int Main()
    {
        string payload = Console.In.ReadToEnd();
        string name = payload.Contains("\"name\"") ? Between(payload, "\"name\"") : "world";
        Console.WriteLine("::enqueue hello {\"name\": \"" + name + "\"}");
        Console.Out.Flush();  // the daemon must see the line before we wait for its answer
        string fd = Environment.GetEnvironmentVariable("JOB_REPLY_FD");
        string[] reply = new StreamReader("/proc/self/fd/" + fd).ReadLine().Split(' ');
        if (reply[0] != "accepted" && reply[0] != "existing")
        {
            Console.Error.WriteLine("could not create the child: " + string.Join(" ", reply));
            return 1;
        }
        bool retryFirst = payload.Replace(" ", "").Contains("\"retry_first\":true");
        if (retryFirst && Environment.GetEnvironmentVariable("JOB_ATTEMPT") == "1") return 75;  // retry: no second child
        Console.WriteLine("::result {\"child\": \"" + reply[1] + "\", \"status\": \"" + reply[0] + "\"}");
        return 0;
    }

    // The letters and digits of the string value after `key` (enough for this example's payload).
    static string Between(string json, string key)
    {
        int i = json.IndexOf('"', json.IndexOf(':', json.IndexOf(key, StringComparison.Ordinal)) + 1) + 1;
        int j = i;
        while (j < json.Length && (char.IsLetterOrDigit(json[j]) || json[j] == ' ')) j++;
        return json.Substring(i, j - i);
    }
}
